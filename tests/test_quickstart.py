"""The README's first command on a fresh checkout: the bridge comes up and a person signs in.

Runs scripts/quickstart itself (install + `bridge quickstart`) into a temporary config
directory, reads the printed URL and one-time password, then signs in twice: with a
cookie-keeping HTTP client and with headless Chromium.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    REPO,
    browser_client,
    free_port,
    launch_chromium,
    sign_in,
    stop,
    wait_until_up,
)


@dataclass
class QuickStart:
    url: str
    username: str
    password: str
    output: list[str]
    config_dir: Path


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickStart]:
    """scripts/quickstart on an empty config directory, serving until the module ends."""
    root = tmp_path_factory.mktemp("quickstart")
    port = free_port()
    process = subprocess.Popen(
        [str(REPO / "scripts" / "quickstart"), "--config", str(root / "config" / "bridge.yaml"),
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        url = None
        while url is None:
            line = lines.get(timeout=180)
            output.append(line)
            match = re.search(r"Bridge is running at (\S+)", line)
            if match:
                url = match.group(1)
        wait_until_up(f"http://127.0.0.1:{port}", process)
        text = "".join(output)
        username = re.search(r"Username: (\S+)", text)
        password = re.search(r"Password: (\S+)", text)
        assert username and password, "the quick start printed no credentials"
        yield QuickStart(url, username.group(1), password.group(1), output, root / "config")
    finally:
        stop(process)


def test_quickstart_prints_url_and_credentials_once(quickstart: QuickStart) -> None:
    assert quickstart.url.startswith("http://localhost:") and quickstart.url.endswith("/app/")
    assert quickstart.username == "admin"
    assert len(quickstart.password) >= 16
    text = "".join(quickstart.output)
    assert text.count(quickstart.password) == 1, "the password must be printed exactly once"
    assert (quickstart.config_dir / "bridge.yaml").is_file()
    assert quickstart.password not in (quickstart.config_dir / "bridge.yaml").read_text()
    keyset = quickstart.config_dir.parent / "certs" / "keyset.json"
    assert keyset.is_file() and oct(keyset.stat().st_mode & 0o777) == "0o600"


def test_quickstart_sign_in_with_http_client(quickstart: QuickStart) -> None:
    client = browser_client()
    base = quickstart.url.removesuffix("/app/")
    page = sign_in(client, base, quickstart.username, quickstart.password)
    assert page.status_code == 200
    assert "Sign-in works" in page.text
    assert '<td id="username">admin</td>' in page.text
    assert '<td id="groups">admins</td>' in page.text
    assert 'id="no-relying-parties"' in page.text
    ready = client.get(base + "/readyz").json()
    assert ready["status"] == "ready"
    assert any("DEVELOPMENT KEYS" in warning for warning in ready["warnings"])


@pytest.mark.browser
def test_quickstart_sign_in_with_chromium(quickstart: QuickStart, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(quickstart.url)
            assert "/login?request=" in page.url
            page.fill("#username", quickstart.username)
            page.fill("#password", "a wrong password")
            page.click("button[type=submit]")
            assert page.inner_text("#error") == "The username or password is incorrect."

            page.fill("#username", quickstart.username)
            page.fill("#password", quickstart.password)
            page.click("button[type=submit]")
            page.wait_for_url(quickstart.url)
            assert page.inner_text("h1") == "Sign-in works"
            assert page.inner_text("#username") == "admin"
            assert page.inner_text("#source") == "local"
            page.screenshot(path=str(tmp_path / "test-app.png"), full_page=True)
            cookies = {c["name"]: c for c in page.context.cookies()}
            session = cookies["bridge_session"]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
        finally:
            browser.close()
