"""Sign-in through /login against a real OpenLDAP slapd: uid/mail, nested group search."""

from __future__ import annotations

import pytest

from tests.ldap.conftest import GENERIC, cell, error_text, ldapsearch
from tests.ldap.directories import SLAPD_BASE, Slapd, TestCA
from tests.ldap.test_ad_sign_in import INJECTION
from tests.support import LiveBridge, browser_client, sign_in, sign_in_attempt


@pytest.mark.parametrize("username", ["alice", "alice@example.test", "ALICE"])
def test_alice_signs_in_with_nested_groups(openldap_bridge: LiveBridge, slapd: Slapd,
                                           test_ca: TestCA, username: str) -> None:
    page = sign_in(browser_client(), openldap_bridge.url, username,
                   slapd.users["alice"].password)
    assert page.status_code == 200
    assert cell(page.text, "Username") == "alice"
    assert cell(page.text, "Email") == "alice@example.test"
    assert cell(page.text, "Groups") == "all-staff, engineering, staff"
    entry = ldapsearch(slapd.url, test_ca.ca_file, slapd.service_dn(), slapd.service_password,
                       f"ou=people,{SLAPD_BASE}", "(uid=alice)", "entryUUID")
    assert cell(page.text, "Subject") == entry["entryuuid"][0]


def test_group_names_that_need_filter_escaping(openldap_bridge: LiveBridge,
                                               slapd: Slapd) -> None:
    page = sign_in(browser_client(), openldap_bridge.url, "pat", slapd.users["pat"].password)
    assert cell(page.text, "Groups") == "R&D (Lab)*"
    assert cell(page.text, "Display name") == "Pat, (IT)* O'Brien"


@pytest.mark.parametrize("username", INJECTION)
def test_injection_usernames_find_nobody(openldap_bridge: LiveBridge, slapd: Slapd,
                                         username: str) -> None:
    response = sign_in_attempt(openldap_bridge.url, username, slapd.users["alice"].password)
    assert response.status_code == 401
    assert error_text(response) == GENERIC


def test_injection_passwords_sign_nobody_in(openldap_bridge: LiveBridge) -> None:
    for password in INJECTION:
        response = sign_in_attempt(openldap_bridge.url, "ivan", password)
        assert response.status_code == 401 and error_text(response) == GENERIC
