"""Sign-in through /login against a real Samba AD domain controller: forms, states, groups."""

from __future__ import annotations

import base64
import re
import uuid

import pytest
import requests

from tests.ldap.conftest import GENERIC, audit_outcomes, cell, error_text, ldapsearch
from tests.ldap.directories import CONSISTENCY_GUID, SAMBA_BASE, SambaDC, TestCA
from tests.support import LiveBridge, browser_client, sign_in, sign_in_attempt


def _objectguid(samba: SambaDC, ca: TestCA, sam: str) -> bytes:
    values = ldapsearch(samba.url, ca.ca_file, samba.service_dn(),
                        samba.users["svc-bridge"].password, SAMBA_BASE,
                        f"(sAMAccountName={sam})", "objectGUID")
    return base64.b64decode(values["objectguid"][0].lstrip(":").strip())


@pytest.mark.parametrize(
    "username",
    ["alice", "alice@corp.example.test", "CORP\\alice", "corp\\alice",
     "alice.smith@mail.example.test", "  ALICE  "],
)
def test_every_username_form_signs_alice_in(ad_bridge: LiveBridge, samba: SambaDC,
                                            username: str) -> None:
    page = sign_in(browser_client(), ad_bridge.url, username, samba.users["alice"].password)
    assert page.status_code == 200, page.text
    assert page.url == ad_bridge.url + "/app/"
    assert cell(page.text, "Username") == "alice"
    assert cell(page.text, "UPN") == "alice@corp.example.test"
    assert cell(page.text, "Email") == "alice.smith@mail.example.test"


def test_identity_subject_immutable_id_and_nested_groups(
    ad_bridge: LiveBridge, samba: SambaDC, test_ca: TestCA
) -> None:
    page = sign_in(browser_client(), ad_bridge.url, "alice", samba.users["alice"].password)
    raw_guid = _objectguid(samba, test_ca, "alice")
    # Subject is the objectGUID; ImmutableID is Base64 of its raw bytes (no ConsistencyGuid).
    assert cell(page.text, "Subject") == str(uuid.UUID(bytes_le=raw_guid))
    assert cell(page.text, "ImmutableID") == base64.b64encode(raw_guid).decode()
    assert cell(page.text, "Display name") == "Alice Smith"
    # Engineering -> Staff -> All Staff, via tokenGroups; plus the primary and builtin groups.
    assert cell(page.text, "Groups") == "All Staff, Domain Users, Engineering, Staff, Users"


def test_immutable_id_prefers_ms_ds_consistency_guid(ad_bridge: LiveBridge,
                                                     samba: SambaDC) -> None:
    page = sign_in(browser_client(), ad_bridge.url, "carl", samba.users["carl"].password)
    expected = base64.b64encode(bytes.fromhex(CONSISTENCY_GUID)).decode()
    assert cell(page.text, "ImmutableID") == expected


def test_names_that_need_escaping_sign_in_and_keep_their_groups(
    ad_bridge: LiveBridge, samba: SambaDC
) -> None:
    # pat's DN is CN=O'Brien\, Pat (IT)* \5CZoë,...: bound as found, never rebuilt from input.
    page = sign_in(browser_client(), ad_bridge.url, "pat@corp.example.test",
                   samba.users["pat"].password)
    assert page.status_code == 200
    assert cell(page.text, "Groups") == "Domain Users, R&D (Lab), Users"


def test_wrong_password_and_unknown_user_get_the_same_answer(ad_bridge: LiveBridge) -> None:
    wrong = sign_in_attempt(ad_bridge.url, "bob", "not bob's password")
    unknown = sign_in_attempt(ad_bridge.url, "nobody-here", "not bob's password")
    assert wrong.status_code == unknown.status_code == 401
    assert error_text(wrong) == error_text(unknown) == GENERIC
    assert ("bob", "invalid_credentials") in audit_outcomes(ad_bridge)
    assert ("nobody-here", "unknown_user") in audit_outcomes(ad_bridge)


@pytest.mark.parametrize(
    ("user", "message", "outcome"),
    [
        ("dora", "This account is disabled. Contact your administrator.", "disabled"),
        ("eve", "This account has expired. Contact your administrator.", "account_expired"),
    ],
)
def test_account_states_are_named_only_after_the_right_password(
    ad_bridge: LiveBridge, samba: SambaDC, user: str, message: str, outcome: str
) -> None:
    right = sign_in_attempt(ad_bridge.url, user, samba.users[user].password)
    assert right.status_code == 401
    assert error_text(right) == message
    wrong = sign_in_attempt(ad_bridge.url, user, "a wrong password")
    assert error_text(wrong) == GENERIC
    outcomes = audit_outcomes(ad_bridge)
    assert (user, outcome) in outcomes and (user, "invalid_credentials") in outcomes


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("pete", "Your password has expired. Choose a new one to continue."),
        ("mike", "You must change your password before you can sign in."),
    ],
)
def test_expired_or_must_change_password_leads_to_the_change_page(
    ad_bridge: LiveBridge, samba: SambaDC, user: str, reason: str
) -> None:
    right = sign_in_attempt(ad_bridge.url, user, samba.users[user].password)
    assert right.status_code == 303
    location = right.headers["Location"]
    assert re.fullmatch(r".*/password/change\?ticket=[A-Za-z0-9_\-]{20,}", location)
    wrong = sign_in_attempt(ad_bridge.url, user, "a wrong password")
    assert wrong.status_code == 401 and error_text(wrong) == GENERIC


def test_locked_account_looks_like_a_wrong_password(ad_bridge: LiveBridge,
                                                   samba: SambaDC) -> None:
    # Threshold 3: three wrong passwords lock larry; then even the right one is refused, and
    # the page says nothing a stranger could not also see for a made-up name.
    for _ in range(3):
        assert sign_in_attempt(ad_bridge.url, "larry", "wrong password!").status_code == 401
    locked = sign_in_attempt(ad_bridge.url, "larry", samba.users["larry"].password)
    assert locked.status_code == 401
    assert error_text(locked) == GENERIC
    assert audit_outcomes(ad_bridge)[-1] == ("larry", "locked")


def test_password_expiry_warning_follows_the_fine_grained_policy(
    ad_bridge: LiveBridge, samba: SambaDC
) -> None:
    # wendy's PSO sets a 10-day maximum age (the domain's is 42): warned, 14-day window.
    client = browser_client()
    page = sign_in(client, ad_bridge.url, "wendy", samba.users["wendy"].password)
    assert page.status_code == 200
    assert 'id="expiry-warning"' in page.text
    days = int(re.search(r'id="days">(\d+)<', page.text).group(1))
    assert days in (9, 10)
    continue_url = re.search(r'id="continue" href="([^"]+)"', page.text).group(1)
    onward = client.get(ad_bridge.url + continue_url.replace("&amp;", "&"))
    assert onward.url == ad_bridge.url + "/app/"
    assert cell(onward.text, "Username") == "wendy"
    # alice (domain policy, 42 days) gets no warning.
    plain = sign_in(browser_client(), ad_bridge.url, "alice", samba.users["alice"].password)
    assert "expiry-warning" not in plain.text


INJECTION = [
    "*", "a*", "*)(uid=*", "admin)(|(objectClass=*", "*)(sAMAccountName=*", "\\2a", "(",
    ")", "alice)(", "CORP\\*", "*@corp.example.test", "alice\x00", "\x00", "ålice-ünïcødé",
    "x" * 10_000, "CN=alice,CN=Users," + SAMBA_BASE, " ", "",
]


@pytest.mark.parametrize("username", INJECTION)
def test_injection_usernames_find_nobody(ad_bridge: LiveBridge, samba: SambaDC,
                                         username: str) -> None:
    response = sign_in_attempt(ad_bridge.url, username, samba.users["alice"].password)
    assert response.status_code == 401
    assert error_text(response) == GENERIC


def test_injection_passwords_sign_nobody_in(ad_bridge: LiveBridge) -> None:
    for password in INJECTION:
        response = sign_in_attempt(ad_bridge.url, "ivan", password)
        assert response.status_code == 401, password[:20]
        assert error_text(response) == GENERIC
    outcomes = {outcome for user, outcome in audit_outcomes(ad_bridge) if user == "ivan"}
    assert "success" not in outcomes
    assert outcomes <= {"invalid_credentials", "rejected_input", "locked"}


def test_readiness_reports_the_directory(ad_bridge: LiveBridge) -> None:
    ready = requests.get(ad_bridge.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"]["source:ad"] == "ok"
