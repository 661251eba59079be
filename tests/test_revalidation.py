"""SSO sessions re-read their user from the source when due (issue 3's session re-validation)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge.sources import SourceUnavailable
from bridge.sources.embedded import USER_KIND, EmbeddedDirectory
from tests.conftest import ALICE_PASSWORD
from tests.support import form_fields


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: Flask) -> Clock:
    """Drive the app's session clock by hand (no sleeping)."""
    import time

    fake = Clock(time.time())
    app.extensions["bridge"].sessions.clock = fake
    return fake


def _sign_in(client: FlaskClient) -> None:
    fields = form_fields(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={**fields, "username": "alice", "password": ALICE_PASSWORD}
    )
    assert response.status_code == 303


def _directory(app: Flask) -> EmbeddedDirectory:
    source = app.extensions["bridge"].login_flow.sources[0]
    assert isinstance(source, EmbeddedDirectory)
    return source


def test_disabled_user_loses_the_session_once_revalidation_is_due(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    _sign_in(client)
    _directory(app).set_disabled("alice", True)
    clock.now += 5 * 60
    assert client.get("/app/").status_code == 200  # not due yet (every 15 minutes)
    clock.now += 11 * 60
    response = client.get("/app/")
    assert response.status_code == 302 and "/login?request=" in response.headers["Location"]
    events = app.extensions["bridge"].store.query_audit(event="session-revalidation")
    assert [(e.username, e.outcome) for e in events] == [("alice", "revoked")]


def test_revalidation_picks_up_changed_groups(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    _sign_in(client)
    store = app.extensions["bridge"].store
    document = store.get_document(USER_KIND, "alice")
    assert document is not None
    store.save_document(
        USER_KIND, "alice", {**document.body, "groups": ["finance"]}, document.version
    )
    assert '<td id="groups">staff, team-alice</td>' in client.get("/app/").get_data(True)
    clock.now += 16 * 60
    page = client.get("/app/").get_data(as_text=True)
    assert '<td id="groups">finance</td>' in page


def test_unavailable_source_keeps_the_session(
    app: Flask, client: FlaskClient, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sign_in(client)

    def down(_identity: object) -> None:
        raise SourceUnavailable("directory down")

    monkeypatch.setattr(_directory(app), "refresh", down)
    clock.now += 16 * 60
    assert client.get("/app/").status_code == 200
