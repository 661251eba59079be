"""Smart lockout (L07) and password-spraying throttles (L08), through the wire.

A live bridge behind one trusted proxy hop, so each request's X-Forwarded-For is its client
address: the user's own address, an attacker's, a sprayer's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bridge.config import SignInProtectionConfig
from bridge.sign_in_protection import SignInProtection, Verdict
from bridge.store.sqlite import SQLiteStore
from tests.conftest import USERS
from tests.support import (
    LiveBridge,
    browser_client,
    form_fields,
    live_bridge,
    prepare,
    sign_in_attempt,
    write_config,
)

HOME = "10.0.0.1"
ATTACKER = "203.0.113.5"
ELSEWHERE = "198.51.100.7"
THROTTLED = "Too many failed sign-ins."
GENERIC = "The username or password is incorrect."


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    path = write_config(
        tmp_path_factory.mktemp("protected") / "bridge",
        server={"trusted_proxy_hops": 1},
        sign_in_protection={"enabled": True, "user_failures": 3, "familiar_user_failures": 3,
                            "address_failures": 6, "window_minutes": 15},
    )
    prepare(path, {**USERS, "carol": "carol's long password 1", "dave": "dave's password 12"})
    with live_bridge(path) as server:
        yield server


def attempt(live: LiveBridge, address: str, username: str, password: str) -> requests.Response:
    """One POST /login from a client address (as the trusted proxy reports it)."""
    return sign_in_attempt(live.url, username, password, {"X-Forwarded-For": address})


def audit_outcomes(live: LiveBridge, username: str) -> list[tuple[str, str | None]]:
    """(outcome, throttle reason) of each stored sign-in attempt of a username, oldest first."""
    database: Path = live.config_path.parent / "data" / "bridge.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT outcome, json_extract(detail, '$.throttle') FROM audit "
            "WHERE event = 'sign-in' AND username = ? ORDER BY id", (username,)
        ).fetchall()
    return [(outcome, reason) for outcome, reason in rows]


def test_an_attacker_cannot_lock_out_the_user_at_their_usual_address(
    protected: LiveBridge,
) -> None:
    alice = USERS["alice"]
    assert attempt(protected, HOME, "alice", alice).status_code == 303  # HOME is now familiar
    for _ in range(3):
        response = attempt(protected, ATTACKER, "alice", "a wrong guess")
        assert response.status_code == 401 and GENERIC in response.text
    # The fourth try is stopped before the password is checked, even the right password,
    # and from any other unfamiliar address too: the directory never sees these.
    for address, password in ((ATTACKER, "another guess"), (ATTACKER, alice),
                              (ELSEWHERE, alice)):
        response = attempt(protected, address, "ALICE", password)
        assert response.status_code == 429 and THROTTLED in response.text
    # The same account written another way counts as the same account.
    assert attempt(protected, ATTACKER, "CORP\\alice", alice).status_code == 429
    # At home alice still signs in.
    assert attempt(protected, HOME, "alice", alice).status_code == 303
    outcomes = [o for o, _ in audit_outcomes(protected, "alice")]
    assert outcomes == ["success", *["invalid_credentials"] * 3, "success"]
    throttled = audit_outcomes(protected, "ALICE") + audit_outcomes(protected, "CORP\\alice")
    assert throttled == [("throttled", "user_throttled")] * 4


def test_unknown_names_are_throttled_like_real_ones(protected: LiveBridge) -> None:
    for _ in range(3):
        assert attempt(protected, ELSEWHERE, "nobody", "a guess").status_code == 401
    response = attempt(protected, ELSEWHERE, "nobody", "a guess")
    assert response.status_code == 429 and THROTTLED in response.text


def test_a_password_sprayer_is_stopped_by_address(protected: LiveBridge) -> None:
    sprayer = "192.0.2.99"
    for name in ("bob", "carol", "dave", "erin", "frank", "grace"):  # one guess per user
        assert attempt(protected, sprayer, name, "Summer2026!").status_code == 401
    # Six failures from the address: even a right password from there waits out the window,
    # while the same user signs in from elsewhere.
    response = attempt(protected, sprayer, "bob", USERS["bob"])
    assert response.status_code == 429 and THROTTLED in response.text
    assert audit_outcomes(protected, "bob")[-1] == ("throttled", "address_throttled")
    assert attempt(protected, "10.0.0.2", "bob", USERS["bob"]).status_code == 303


def test_a_success_at_a_familiar_address_clears_its_failures(protected: LiveBridge) -> None:
    carol = "carol's long password 1"
    office = "10.0.0.3"
    assert attempt(protected, office, "carol", carol).status_code == 303
    for _ in range(2):
        assert attempt(protected, office, "carol", "typo").status_code == 401
    assert attempt(protected, office, "carol", carol).status_code == 303
    for _ in range(2):  # two more typos: the count started again
        assert attempt(protected, office, "carol", "typo").status_code == 401
    assert attempt(protected, office, "carol", carol).status_code == 303


def parallel_guesses(live: LiveBridge, address: str, username: str, count: int) -> list[int]:
    """The sorted statuses of `count` wrong guesses sent at the same moment from one address."""
    pages = {"X-Forwarded-For": address}
    clients = [browser_client() for _ in range(count)]
    forms = [form_fields(c.get(live.url + "/login", headers=pages).text) for c in clients]

    def guess(i: int) -> int:
        return clients[i].post(
            live.url + "/login", headers=pages, allow_redirects=False,
            data={**forms[i], "username": username, "password": f"guess {i}"},
        ).status_code

    with ThreadPoolExecutor(count) as pool:
        return sorted(pool.map(guess, range(count)))


def test_parallel_guesses_cannot_slip_past_the_limit_together(protected: LiveBridge) -> None:
    # Counted before the password is checked: of 20 simultaneous guesses, 3 reach the directory.
    assert parallel_guesses(protected, "203.0.113.77", "zoe", 20) == [401] * 3 + [429] * 17


def test_parallel_guesses_from_a_familiar_address_are_held_back_too(
    protected: LiveBridge,
) -> None:
    # A shared office address is familiar to everyone who works there: an insider's burst of
    # guesses at a colleague's account from it must not reach the directory either.
    dave = "dave's password 12"
    office = "10.0.0.4"
    assert attempt(protected, office, "dave", dave).status_code == 303
    before = len(audit_outcomes(protected, "dave"))
    assert parallel_guesses(protected, office, "dave", 20) == [401] * 3 + [429] * 17
    burst = [o for o, _ in audit_outcomes(protected, "dave")[before:]]
    assert sorted(burst) == ["invalid_credentials"] * 3 + ["throttled"] * 17
    # The familiar counter is spent for this window; an address dave never used is not.
    assert attempt(protected, office, "dave", dave).status_code == 429
    assert attempt(protected, "10.0.0.5", "dave", dave).status_code == 303


def test_a_spelling_is_tied_to_its_account_as_a_whole_name(tmp_path: Path) -> None:
    # alice's mail address bob@mail.example.test is alice once a source has found her by it;
    # the account name bob stays bob's.
    store = SQLiteStore(tmp_path / "bridge.db")
    protection = SignInProtection(
        store, SignInProtectionConfig(user_failures=2, familiar_user_failures=1)
    )
    try:
        first = protection.check("bob@mail.example.test", ATTACKER)
        assert first.username == "bob"  # nothing is known of this spelling yet
        moved = protection.admit(first, "ALICE")  # the directory found alice by that mail
        assert moved.username == "alice" and moved.verdict is Verdict.ALLOWED
        protection.failed(moved)
        again = protection.check("BOB@mail.example.test", ATTACKER)
        assert again.username == "alice" and again.verdict is Verdict.ALLOWED
        assert protection.admit(again, "alice") is again
        protection.failed(again)
        # Both guesses count on alice: a third try at her account is held back.
        assert protection.check("alice", ELSEWHERE).verdict is Verdict.USER_THROTTLED
        third = protection.check("bob@mail.example.test", ELSEWHERE)
        assert third.username == "alice" and third.verdict is Verdict.USER_THROTTLED
        # bob's own counter was given back when the first guess moved to alice.
        bob = protection.check("bob", ELSEWHERE)
        assert bob.username == "bob" and bob.failures == 0
    finally:
        store.close()
