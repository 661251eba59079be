"""Smart lockout against a real AD lockout policy (Samba: 3 bad passwords lock an account).

Without the bridge's protection, three wrong passwords lock an account
(test_locked_account_looks_like_a_wrong_password); with it, an attacker's guesses stop at the
bridge, the domain controller's bad-password count stays below its threshold, and the user
still signs in from an address they used before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from ldap3 import BASE

from tests.ldap.conftest import (
    ad_source,
    change_form,
    error_text,
    ldap_source,
    submit_change,
    write_ldap_config,
)
from tests.ldap.directories import SambaDC, TestCA, random_password
from tests.support import LiveBridge, browser_client, live_bridge
from tests.test_sign_in_protection import ATTACKER, ELSEWHERE, HOME, THROTTLED, attempt


@contextmanager
def protected_bridge(tmp_path_factory: pytest.TempPathFactory, samba: SambaDC, test_ca: TestCA,
                     user_failures: int) -> Iterator[LiveBridge]:
    """A bridge on the Samba DC behind one trusted proxy hop, its sign-in protection on."""
    path = write_ldap_config(
        tmp_path_factory.mktemp("protected-ad") / "bridge",
        ad_source(samba, test_ca.ca_file), samba.users["svc-bridge"].password,
        server={"trusted_proxy_hops": 1},
        sign_in_protection={"enabled": True, "user_failures": user_failures,
                            "familiar_user_failures": 1},
    )
    with live_bridge(path) as server:
        yield server


@pytest.fixture(scope="module")
def protected_ad(tmp_path_factory: pytest.TempPathFactory, samba: SambaDC,
                 test_ca: TestCA) -> Iterator[LiveBridge]:
    # 1 + 1 guesses per window (unfamiliar and familiar addresses) < the domain's 3.
    with protected_bridge(tmp_path_factory, samba, test_ca, user_failures=1) as server:
        yield server


def bad_password_count(samba: SambaDC, test_ca: TestCA, username: str) -> int:
    """The DC's own badPwdCount for a user, read with the service account."""
    source = ldap_source(ad_source(samba, test_ca.ca_file), samba.users["svc-bridge"].password)
    try:
        entry = source.find_user(username)
        assert entry is not None
        _, entries = source.pool.run("service", lambda connection: source._search(
            connection, entry.dn, "(objectClass=*)", BASE, ["badPwdCount"]))
        return int(entries[0].values.get("badpwdcount", [b"0"])[0])
    finally:
        source.close()


def test_guesses_stop_before_the_domain_locks_the_account(
    protected_ad: LiveBridge, samba: SambaDC, test_ca: TestCA
) -> None:
    password = samba.users["sally"].password
    assert attempt(protected_ad, HOME, "sally", password).status_code == 303
    assert bad_password_count(samba, test_ca, "sally") == 0
    assert attempt(protected_ad, ATTACKER, "sally", "guess 1").status_code == 401
    for address, username in ((ATTACKER, "sally"), (ELSEWHERE, "sally@corp.example.test"),
                              (ATTACKER, "CORP\\sally")) * 3:
        response = attempt(protected_ad, address, username, "another guess")
        assert response.status_code == 429 and THROTTLED in response.text
    # Ten guesses, one of which reached the DC: nowhere near its threshold of three.
    assert bad_password_count(samba, test_ca, "sally") == 1
    assert attempt(protected_ad, HOME, "sally", password).status_code == 303


@pytest.fixture(scope="module")
def two_guesses_ad(tmp_path_factory: pytest.TempPathFactory, samba: SambaDC,
                   test_ca: TestCA) -> Iterator[LiveBridge]:
    # Two guesses per window from unfamiliar addresses (the tests make none from familiar
    # ones), against the domain's three.
    with protected_bridge(tmp_path_factory, samba, test_ca, user_failures=2) as server:
        yield server


def test_spelling_an_account_another_way_buys_no_more_guesses(
    two_guesses_ad: LiveBridge, samba: SambaDC, test_ca: TestCA
) -> None:
    # mona's mail address does not start with her account name, so only the directory knows
    # it is her: the bridge asks once the DC has found her, before any bind. Without that, two
    # guesses by account name and one by mail would lock her out at the DC.
    mail = samba.users["mona"].mail
    assert mail is not None and not mail.startswith("mona")
    assert attempt(two_guesses_ad, HOME, "mona", samba.users["mona"].password).status_code == 303
    for _ in range(2):
        assert attempt(two_guesses_ad, ATTACKER, "mona", "a guess").status_code == 401
    for address, username in ((ATTACKER, mail), (ELSEWHERE, mail.upper()),
                              (ATTACKER, "CORP\\mona"), (ELSEWHERE, mail)):
        response = attempt(two_guesses_ad, address, username, "another guess")
        assert response.status_code == 429 and THROTTLED in response.text
    assert bad_password_count(samba, test_ca, "mona") == 2
    assert attempt(two_guesses_ad, HOME, mail, samba.users["mona"].password).status_code == 303


def test_the_change_password_page_counts_spellings_on_the_account_too(
    two_guesses_ad: LiveBridge, samba: SambaDC, test_ca: TestCA
) -> None:
    # Its current password is a guess like any sign-in's, by whatever name it is typed.
    for _ in range(2):
        assert attempt(two_guesses_ad, ATTACKER, "nina", "a guess").status_code == 401
    client = browser_client()
    fields = change_form(client, two_guesses_ad.url + "/password/change")
    fields["username"] = samba.users["nina"].mail or ""
    new = random_password()
    response = submit_change(client, two_guesses_ad.url, fields, "another guess", new,
                             headers={"X-Forwarded-For": ATTACKER})
    assert response.status_code == 429 and THROTTLED in error_text(response)
    assert bad_password_count(samba, test_ca, "nina") == 2
