"""The app factory: independent apps, the test application switch, readable error pages."""

from __future__ import annotations

from pathlib import Path

from bridge.app import create_app
from bridge.config import load_config
from tests.conftest import ALICE_PASSWORD, USERS
from tests.support import form_fields, prepare, write_config


def test_test_app_is_off_unless_configured(tmp_path: Path) -> None:
    path = write_config(tmp_path / "b", test_app={"enabled": False})
    prepare(path, USERS)
    client = create_app(config_path=path).test_client()
    missing = client.get("/app/")
    assert missing.status_code == 404
    assert b"Not found" in missing.data and b"Traceback" not in missing.data
    # Signing in lands on the plain home page instead.
    page = client.get("/login")
    fields = form_fields(page.get_data(as_text=True))
    done = client.post(
        "/login", data={**fields, "username": "alice", "password": ALICE_PASSWORD}
    )
    assert done.status_code == 303 and done.headers["Location"] == "/"


def test_two_apps_in_one_process_share_nothing(tmp_path: Path) -> None:
    first_path = write_config(tmp_path / "one")
    second_path = write_config(tmp_path / "two")
    prepare(first_path, {"alice": ALICE_PASSWORD})
    prepare(second_path, {})
    first = create_app(load_config(first_path))
    second = create_app(load_config(second_path))
    assert first.extensions["bridge"].store is not second.extensions["bridge"].store
    assert first.extensions["bridge"].metrics.registry is not (
        second.extensions["bridge"].metrics.registry
    )
    client = first.test_client()
    fields = form_fields(client.get("/login").get_data(as_text=True))
    assert client.post(
        "/login", data={**fields, "username": "alice", "password": ALICE_PASSWORD}
    ).status_code == 303
    other = second.test_client()
    fields = form_fields(other.get("/login").get_data(as_text=True))
    assert other.post(
        "/login", data={**fields, "username": "alice", "password": ALICE_PASSWORD}
    ).status_code == 401
    assert b'bridge_sign_ins_total{outcome="success",source="local"} 1.0' in (
        client.get("/metrics").data
    )
    assert b'outcome="success"' not in other.get("/metrics").data


def test_home_sends_strangers_to_sign_in(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"] == "/login"


def test_unknown_path_and_method_get_readable_pages(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/no/such/page").status_code == 404
    wrong = client.delete("/login")
    assert wrong.status_code == 405 and b"Traceback" not in wrong.data
