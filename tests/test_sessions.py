"""SSO session lifetimes and storage, with a controllable clock (no sleeping)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.identity import Authentication, Identity
from bridge.sessions import SESSION_KIND, SessionManager
from bridge.store.sqlite import SQLiteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(tmp_path: Path, clock: Clock) -> SessionManager:
    store = SQLiteStore(tmp_path / "bridge.db", clock=clock)
    return SessionManager(store, idle_seconds=600, absolute_seconds=3600, clock=clock)


IDENTITY = Identity(subject="u-1", username="alice", source="local", groups=("staff",))


def test_every_identity_field_survives_the_store_record() -> None:
    full = Identity(
        subject="u-1", username="alice", source="ad", upn="alice@corp.test",
        email="alice@corp.test", display_name="Alice", given_name="A", family_name="L",
        groups=("staff", "R&D"), group_dns=("cn=staff", "cn=r&d"), immutable_id="AAEC",
        attributes={"employeeID": ("42",), "photo": ("AAE=", "AQI=")},
        authentication=Authentication(source="ad", amr=("pwd", "mfa")),
    )
    record = full.to_record()
    assert json.loads(json.dumps(record)) == record  # JSON-safe as it is
    assert Identity.from_record(record) == full
    assert Identity.from_record(IDENTITY.to_record()) == IDENTITY


def test_session_round_trips_identity(manager: SessionManager) -> None:
    session = manager.create(IDENTITY)
    loaded = manager.load(session.id)
    assert loaded is not None and loaded.identity == IDENTITY


def test_idle_lifetime_ends_an_unused_session(manager: SessionManager, clock: Clock) -> None:
    session = manager.create(IDENTITY)
    clock.advance(599)
    assert manager.load(session.id) is not None  # use refreshes the idle deadline
    clock.advance(599)
    assert manager.load(session.id) is not None
    clock.advance(601)
    assert manager.load(session.id) is None


def test_absolute_lifetime_ends_even_an_active_session(
    manager: SessionManager, clock: Clock
) -> None:
    session = manager.create(IDENTITY)
    for _ in range(6):
        clock.advance(590)
        assert manager.load(session.id) is not None
    clock.advance(590)  # 4130 s after sign-in, past the 3600 s absolute lifetime
    assert manager.load(session.id) is None


def test_create_rotates_and_ends_the_previous_session(manager: SessionManager) -> None:
    first = manager.create(IDENTITY)
    second = manager.create(IDENTITY, previous_id=first.id)
    assert second.id != first.id
    assert manager.load(first.id) is None
    assert manager.load(second.id) is not None


def test_store_holds_only_a_digest_of_the_cookie(manager: SessionManager) -> None:
    session = manager.create(IDENTITY)
    assert manager.store.get(SESSION_KIND, session.id) is None
    assert manager.load(session.id) is not None


@pytest.mark.parametrize("cookie", [None, "", "x" * 129, "not-a-session", "' OR 1=1 --"])
def test_garbage_cookies_find_no_session(manager: SessionManager, cookie: str | None) -> None:
    manager.create(IDENTITY)
    assert manager.load(cookie) is None


def test_participants_are_remembered_for_single_logout(manager: SessionManager) -> None:
    session = manager.create(IDENTITY)
    session = manager.add_participant(session, "saml:https://sp.example.test")
    session = manager.add_participant(session, "saml:https://sp.example.test")
    loaded = manager.load(session.id)
    assert loaded is not None and loaded.participants == ("saml:https://sp.example.test",)
