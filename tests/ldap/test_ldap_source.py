"""The LDAP source in-process against the real servers: guards, TLS, pooling, refresh, CLI."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ConfigError, config_from_dict
from bridge.sources import Outcome, credentials_acceptable
from bridge.sources.ldap_ad import (
    account_state,
    bind_subcode,
    explain_password_change_refusal,
    from_filetime,
    outcome_for_bind_failure,
    to_filetime,
)
from tests.ldap.conftest import ad_source, ldap_source, openldap_source, write_ldap_config
from tests.ldap.directories import SambaDC, Slapd, TestCA
from tests.support import run_cli


class _NoNetwork:
    """A pool that fails the test if anything reaches the network."""

    def run(self, kind: str, operation: Any) -> Any:
        raise AssertionError("the directory was contacted")


@pytest.mark.parametrize("password", ["", " ", "   \t ", "\x00", "pass\x00word", "x" * 1025])
def test_blank_and_nul_passwords_are_refused_before_any_bind(
    password: str, samba: SambaDC, test_ca: TestCA
) -> None:
    # L01: real AD takes a DN with an empty password as an anonymous bind that succeeds;
    # Samba does not reproduce that, so the guard itself is what is tested.
    assert not credentials_acceptable("alice", password)
    source = ldap_source(ad_source(samba, test_ca.ca_file), "unused")
    source.pool = _NoNetwork()  # type: ignore[assignment]
    assert source.authenticate("alice", password).outcome is Outcome.REJECTED_INPUT
    assert source.change_password("alice", password, "Another-Passw0rd!") is not None


def test_filters_escape_every_special_character(samba: SambaDC, test_ca: TestCA) -> None:
    source = ldap_source(ad_source(samba, test_ca.ca_file), "unused")
    base = "(&(objectClass=user)(objectCategory=person))"
    assert source.user_filter("*)(uid=*") == f"(&{base}(sAMAccountName=\\2a\\29\\28uid=\\2a))"
    assert source.user_filter("a@b\\c") is None  # DOMAIN\user with an unknown domain "a@b"
    assert source.user_filter("CORP\\al*ce") == f"(&{base}(sAMAccountName=al\\2ace))"
    assert source.user_filter("x@y.test") == (
        f"(&{base}(|(userPrincipalName=x@y.test)(mail=x@y.test)))"
    )
    assert source.user_filter("OTHER\\alice") is None
    assert source.user_filter("x" * 300) is None


def test_bind_subcodes_and_state_attributes() -> None:
    message = (
        "80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data 775, v4563"
    )
    assert bind_subcode(message) == "775"
    assert outcome_for_bind_failure(message) is Outcome.LOCKED
    assert outcome_for_bind_failure("... data 52e, v893") is Outcome.INVALID_CREDENTIALS
    assert outcome_for_bind_failure("... data 532, v893") is Outcome.PASSWORD_EXPIRED
    assert outcome_for_bind_failure("... data 773, v893") is Outcome.MUST_CHANGE_PASSWORD
    assert outcome_for_bind_failure("... data 701, v893") is Outcome.ACCOUNT_EXPIRED
    assert outcome_for_bind_failure("... data 530, v893") is Outcome.LOGON_HOURS
    assert outcome_for_bind_failure("... data 531, v893") is Outcome.WORKSTATION_RESTRICTED
    assert outcome_for_bind_failure(None) is Outcome.INVALID_CREDENTIALS
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert from_filetime(to_filetime(moment)) == moment
    assert from_filetime(0) is None and from_filetime(0x7FFFFFFFFFFFFFFF) is None
    state = account_state({
        "useraccountcontrol": [b"512"],
        "msds-user-account-control-computed": [b"16"],  # UF_LOCKOUT
        "pwdlastset": [b"133000000000000000"],
        "accountexpires": [str(to_filetime(moment)).encode()],
    })
    assert state.locked and not state.disabled and state.account_expires == moment
    assert state.blocking_outcome(datetime(2031, 1, 1, tzinfo=UTC)) is Outcome.ACCOUNT_EXPIRED
    assert state.blocking_outcome(datetime(2029, 1, 1, tzinfo=UTC)) is Outcome.LOCKED
    assert explain_password_change_refusal(
        "0000052D: Constraint violation - check_password_restrictions: ..."
    ).startswith("The new password does not meet the password policy")


def test_config_refuses_plain_ldap_text_secrets_and_missing_ca(tmp_path: Path) -> None:
    raw = {
        "sources": [{
            "id": "ad", "type": "ldap", "servers": ["ldap://dc1.example.test"],
            "bind_dn": "CN=svc", "bind_password": "in clear text", "ca_file": "missing.pem",
            "receive_timeout_seconds": 0,
            "user_search": {"base_dn": "DC=example", "filter": "objectClass=user"},
        }],
    }
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, tmp_path)
    problems = "\n".join(caught.value.problems)
    assert "sources[0].bind_password: secrets must be given with !env" in problems
    assert "sources[0].ca_file: CA file" in problems
    assert "sources[0].receive_timeout_seconds" in problems
    assert "sources[0].user_search.filter: must be one parenthesised LDAP filter" in problems


def test_wrong_ca_is_refused(samba: SambaDC, test_ca: TestCA) -> None:
    source = ldap_source(ad_source(samba, test_ca.other_ca()), samba.users["svc-bridge"].password)
    with pytest.raises(Exception, match="certificate verify failed"):
        source.authenticate("alice", samba.users["alice"].password)
    assert "certificate verify failed" in (source.pool.health()[0]["last_error"] or "")


def test_plain_ldap_needs_the_flag_and_logs_a_warning(
    slapd: Slapd, test_ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    raw = openldap_source(slapd, test_ca.ca_file,
                          servers=[f"ldap://127.0.0.1:{slapd.ldap_port}"])
    raw["ca_file"] = None
    with pytest.raises(ValueError, match="clear text"):
        ldap_source(raw, slapd.service_password)
    with caplog.at_level(logging.WARNING, logger="bridge.sources.ldap"):
        source = ldap_source({**raw, "insecure_plain_ldap": True}, slapd.service_password)
    assert "without TLS" in caplog.text
    assert source.authenticate("alice", slapd.users["alice"].password).ok


def test_start_tls_verifies_and_signs_in(slapd: Slapd, test_ca: TestCA) -> None:
    raw = openldap_source(slapd, test_ca.ca_file,
                          servers=[f"ldap://127.0.0.1:{slapd.ldap_port}"], start_tls=True)
    assert ldap_source(raw, slapd.service_password).authenticate(
        "alice", slapd.users["alice"].password).ok
    wrong = ldap_source({**raw, "ca_file": str(test_ca.other_ca())}, slapd.service_password)
    with pytest.raises(Exception, match="certificate verify failed"):
        wrong.authenticate("alice", slapd.users["alice"].password)


@pytest.mark.parametrize("start_tls", [False, True])
def test_tls_handshakes_run_without_nagle(start_tls: bool, slapd: Slapd,
                                          test_ca: TestCA) -> None:
    # With Nagle on, each new LDAPS / StartTLS connection stalled ~40 ms in its handshake
    # (46 ms per connection against this slapd, 2.6 ms without): what a failover costs.
    overrides = ({"servers": [f"ldap://127.0.0.1:{slapd.ldap_port}"], "start_tls": True}
                 if start_tls else {})
    source = ldap_source(openldap_source(slapd, test_ca.ca_file, **overrides),
                     slapd.service_password)
    connection = source.pool.open_connection(source.pool.controllers[0], "service")
    assert connection.tls_started or connection.server.ssl
    assert connection.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    connection.unbind()
    source.close()


def test_connections_are_pooled_and_rebound_not_reopened(slapd: Slapd,
                                                         test_ca: TestCA) -> None:
    source = ldap_source(openldap_source(slapd, test_ca.ca_file), slapd.service_password)
    users = [("alice", slapd.users["alice"].password), ("bob", slapd.users["bob"].password)]
    assert all(source.authenticate(u, p).ok for u, p in users)
    opened = source.pool.health()[0]["connections_opened"]
    for _ in range(25):
        for user, password in users:
            assert source.authenticate(user, password).ok
        assert source.authenticate("alice", "wrong password").outcome is (
            Outcome.INVALID_CREDENTIALS)
    assert source.pool.health()[0]["connections_opened"] == opened == 2
    connection = source.pool.open_connection(source.pool.controllers[0], "user")
    assert connection.auto_referrals is False  # L04: referrals are never chased
    source.close()


def test_member_of_mode_walks_nested_groups(slapd: Slapd, test_ca: TestCA) -> None:
    raw = openldap_source(slapd, test_ca.ca_file, group_search={"mode": "member_of"})
    result = ldap_source(raw, slapd.service_password).authenticate(
        "alice", slapd.users["alice"].password)
    assert result.identity is not None
    assert result.identity.groups == ("all-staff", "engineering", "staff")


@pytest.mark.parametrize(("mode", "requests_after_warm_up"), [
    ("search", ["user search", "groups holding the user"]),
    ("member_of", ["user search"]),
])
def test_group_nesting_is_cached_but_the_users_own_groups_are_read_each_time(
    mode: str, requests_after_warm_up: list[str], slapd: Slapd, test_ca: TestCA
) -> None:
    raw = openldap_source(slapd, test_ca.ca_file)
    raw["group_search"] = {**raw["group_search"], "mode": mode}
    source = ldap_source(raw, slapd.service_password)
    searches: list[str] = []
    run = source.pool.run

    def counting(kind: str, operation: Any) -> Any:
        if kind == "service":
            searches.append(kind)
        return run(kind, operation)

    source.pool.run = counting  # type: ignore[method-assign]
    password = slapd.users["alice"].password
    first = source.authenticate("alice", password).identity
    cold = len(searches)
    searches.clear()
    second = source.authenticate("alice", password).identity
    assert first is not None and second is not None
    assert first.groups == second.groups == ("all-staff", "engineering", "staff")
    assert len(searches) == len(requests_after_warm_up) < cold
    source.close()


def test_refresh_rereads_groups_and_state(samba: SambaDC, test_ca: TestCA) -> None:
    source = ldap_source(ad_source(samba, test_ca.ca_file), samba.users["svc-bridge"].password)
    identity = source.authenticate("bob", samba.users["bob"].password).identity
    assert identity is not None and "Staff" in identity.groups
    refreshed = source.refresh(identity)
    assert refreshed is not None and refreshed.groups == identity.groups
    private = samba.directory / "private" / "sam.ldb"
    subprocess.run(["samba-tool", "user", "disable", "bob", "-H", str(private)], check=True,
                   capture_output=True, timeout=60)
    try:
        assert source.refresh(identity) is None
    finally:
        subprocess.run(["samba-tool", "user", "enable", "bob", "-H", str(private)],
                       check=True, capture_output=True, timeout=60)
    assert source.refresh(identity) is not None


def test_cli_checks_servers_and_shows_a_users_identity(
    tmp_path: Path, samba: SambaDC, test_ca: TestCA
) -> None:
    path = write_ldap_config(tmp_path / "bridge", ad_source(samba, test_ca.ca_file),
                             samba.users["svc-bridge"].password)
    result = run_cli("ldap", "test", "--config", str(path), "--source", "ad", "--user",
                     "CORP\\wendy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    server = report["servers"][0]
    assert server["ok"] and server["user_search_base"] == "found"
    assert server["tls"].startswith("verified against")
    assert server["certificate_subject"] == "commonName=localhost"
    assert report["user"]["username"] == "wendy"
    assert report["user"]["upn"] == "wendy@corp.example.test"
    assert report["account_state"]["password_expires"] is not None
    assert samba.users["wendy"].password not in result.stdout

    bad = write_ldap_config(tmp_path / "bad", ad_source(samba, test_ca.other_ca()),
                            samba.users["svc-bridge"].password)
    failed = run_cli("ldap", "test", "--config", str(bad), "--source", "ad")
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout and "certificate verify failed" in failed.stdout


@pytest.mark.parametrize("name", ["ldap-ad.yaml", "ldap-openldap.yaml"])
def test_example_configs_are_valid(name: str, tmp_path: Path, test_ca: TestCA,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.config import load_config
    from tests.support import REPO

    monkeypatch.setenv("BRIDGE_AD_BIND_PASSWORD", "example")
    secret = tmp_path / "bind"
    secret.write_text("example")
    text = (REPO / "config" / "examples" / name).read_text()
    text = re.sub(r"ca_file: \S+", f"ca_file: {test_ca.ca_file}", text)
    text = text.replace("/run/secrets/ldap-bind", str(secret))
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    config = load_config(path)
    assert config.sources[0].type == "ldap"
