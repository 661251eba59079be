"""Operations through the wire: health, readiness, metrics, JSON logs, and a broken store."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE_PASSWORD, USERS
from tests.support import (
    LiveBridge,
    browser_client,
    form_fields,
    live_bridge,
    prepare,
    sign_in,
    write_config,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    """A live bridge whose store gives up on a lock after 300 ms (sign-in protection on)."""
    path = write_config(tmp_path_factory.mktemp("ops") / "bridge",
                        store={"busy_timeout_ms": 300}, sign_in_protection={"enabled": True})
    prepare(path, USERS)
    with live_bridge(path) as server:
        yield server


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_healthz_and_readyz(live: LiveBridge) -> None:
    assert requests.get(live.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(live.url + "/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"store": "ok", "source:local": "ok"}
    assert len(body["warnings"]) == 3  # development keys for saml, jwt-es256, jwt-rs256
    assert all("DEVELOPMENT KEYS IN USE" in w for w in body["warnings"])


def test_metrics_count_sign_ins_across_workers(live: LiveBridge) -> None:
    before = requests.get(live.url + "/metrics").text
    for _ in range(3):
        assert sign_in(browser_client(), live.url, "alice", ALICE_PASSWORD).status_code == 200
    for _ in range(2):
        assert sign_in(browser_client(), live.url, "alice", "wrong password!").status_code == 401
    after = requests.get(live.url + "/metrics").text
    for outcome, expected in (("success", 3), ("invalid_credentials", 2)):
        delta = _metric(after, "bridge_sign_ins_total", outcome=outcome, source="local") - _metric(
            before, "bridge_sign_ins_total", outcome=outcome, source="local"
        )
        assert delta == expected, outcome
    assert _metric(after, "bridge_http_requests_total", endpoint="auth.login_submit",
                   method="POST", status="401") >= 2
    assert _metric(after, "bridge_http_request_duration_seconds_count",
                   endpoint="auth.login") >= 5


def test_json_logs_carry_the_request_id_and_no_secret(live: LiveBridge) -> None:
    client = browser_client()
    response = client.get(live.url + "/login", headers={"X-Request-ID": "trace-0123456789"})
    assert response.headers["X-Request-ID"] == "trace-0123456789"
    sign_in(client, live.url, "alice", ALICE_PASSWORD)
    bad_id = "bad id <script> " + "x" * 100
    forged = client.get(live.url + "/login", headers={"X-Request-ID": bad_id})
    assert re.fullmatch(r"[0-9a-f]{16}", forged.headers["X-Request-ID"])

    entries = [json.loads(line) for line in live.logs().splitlines() if line.startswith("{")]
    mine = [e for e in entries if e.get("request_id") == "trace-0123456789"]
    assert mine and mine[0]["logger"] == "bridge.access"
    assert mine[0]["path"] == "/login" and mine[0]["status"] == 200
    assert {"time", "level", "message", "duration_ms"} <= set(mine[0])
    text = live.logs()
    assert ALICE_PASSWORD not in text
    assert "csrf_token" not in text and "bridge_session" not in text


def test_locked_store_gives_503_readiness_and_readable_pages(live: LiveBridge) -> None:
    db = sqlite3.connect(live.config_path.parent / "data" / "bridge.db", timeout=0.1,
                         isolation_level=None)
    client = browser_client()
    page = client.get(live.url + "/login")
    db.execute("BEGIN EXCLUSIVE")
    try:
        ready = requests.get(live.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready"
        assert ready.json()["checks"]["store"].startswith("unavailable")

        login_page = client.get(live.url + "/login", timeout=10)
        assert login_page.status_code == 200 and "Sign in" in login_page.text

        attempt = client.post(
            live.url + "/login",
            data={**form_fields(page.text), "username": "alice", "password": ALICE_PASSWORD},
            timeout=10,
        )
        assert attempt.status_code == 503
        assert "temporarily unavailable" in attempt.text
        assert "Traceback" not in attempt.text and "sqlite" not in attempt.text.lower()
        assert "bridge_session" not in client.cookies
    finally:
        db.execute("ROLLBACK")
        db.close()
    # Recovery without a restart.
    assert requests.get(live.url + "/readyz").status_code == 200
    assert sign_in(client, live.url, "alice", ALICE_PASSWORD).status_code == 200


def _wait_for_status(url: str, status: int, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if requests.get(url, timeout=10).status_code == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {deadline_seconds}s")


def test_unreadable_store_gives_503_and_readable_pages(tmp_path: Path) -> None:
    path = write_config(tmp_path / "bridge")
    prepare(path, USERS)
    with live_bridge(path) as server:
        client = browser_client()
        page = client.get(server.url + "/login")
        db_file = path.parent / "data" / "bridge.db"
        for suffix in ("-wal", "-shm"):
            Path(str(db_file) + suffix).unlink(missing_ok=True)
        with db_file.open("r+b") as handle:
            handle.write(b"this is not a database" * 512)
        # Open connections may keep serving SQLite's page cache; workers that start now (as
        # after a crash or a reload) must come up and report the store, not die.
        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for_status(server.url + "/readyz", 503)
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        attempt = client.post(
            server.url + "/login",
            data={**form_fields(page.text), "username": "alice", "password": ALICE_PASSWORD},
            timeout=10,
        )
        assert attempt.status_code == 503
        assert "temporarily unavailable" in attempt.text
        assert "Traceback" not in attempt.text
        assert client.get(server.url + "/login").status_code == 200
        assert "Traceback" not in server.logs()


def test_app_builds_and_reports_when_the_store_is_not_a_database(tmp_path: Path) -> None:
    from bridge.app import create_app

    path = write_config(tmp_path / "bridge")
    prepare(path, USERS)
    db_file = path.parent / "data" / "bridge.db"
    db_file.write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        Path(str(db_file) + suffix).unlink(missing_ok=True)
    client = create_app(config_path=path).test_client()
    assert client.get("/readyz").status_code == 503
    page = client.get("/login")
    assert page.status_code == 200
    attempt = client.post(
        "/login",
        data={**form_fields(page.get_data(as_text=True)), "username": "alice",
              "password": ALICE_PASSWORD},
    )
    assert attempt.status_code == 503 and b"temporarily unavailable" in attempt.data


def test_metrics_survive_worker_restarts(tmp_path: Path) -> None:
    # Forked workers exit through the server's stack; none of them may remove the shared
    # metrics directory the others still write to (it did, turning every request into a 500).
    path = write_config(tmp_path / "bridge")
    prepare(path, USERS)
    with live_bridge(path) as server:
        assert sign_in(browser_client(), server.url, "alice", ALICE_PASSWORD).status_code == 200
        old_workers = _children(server.process.pid)
        os.kill(server.process.pid, signal.SIGHUP)  # gunicorn replaces every worker
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = _children(server.process.pid)
            if len(workers) == 2 and not workers & old_workers:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("gunicorn did not replace its workers within 30 s")
        for _ in range(10):
            assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        metrics = requests.get(server.url + "/metrics", timeout=10)
        assert metrics.status_code == 200
        assert _metric(metrics.text, "bridge_sign_ins_total", outcome="success",
                       source="local") == 1
        assert "Traceback" not in server.logs()


def _children(pid: int) -> set[int]:
    """Process ids whose parent is pid (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found
