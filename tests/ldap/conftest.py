"""Fixtures: one Samba AD DC and one OpenLDAP slapd per test session, bridges in front of them."""

from __future__ import annotations

import html
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.schema import TaggedSecret
from bridge.sources.ldap import LdapSource
from bridge.sources.ldap_config import LdapSourceConfig
from tests.ldap.directories import (
    NETBIOS,
    SAMBA_BASE,
    SLAPD_BASE,
    SambaDC,
    Slapd,
    TestCA,
)
from tests.support import LiveBridge, live_bridge, prepare, write_config

PASSWORD_MARK = "__BIND_PASSWORD_FILE__"
GENERIC = "The username or password is incorrect."


@pytest.fixture(scope="session")
def ldap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for this session's directory servers."""
    return tmp_path_factory.mktemp("directories")


@pytest.fixture(scope="session")
def test_ca(ldap_root: Path) -> TestCA:
    """The CA that signs both servers' certificates (generated per run)."""
    return TestCA(ldap_root / "ca")


@pytest.fixture(scope="session")
def samba(ldap_root: Path, test_ca: TestCA) -> Iterator[SambaDC]:
    """A Samba AD DC, provisioned and seeded once per session, listening on 127.0.0.1:636."""
    dc = SambaDC(ldap_root / "samba", test_ca)
    dc.provision()
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


@contextmanager
def running(server: Slapd) -> Iterator[Slapd]:
    """Configure, start and seed a slapd; stop it afterwards."""
    server.configure()
    server.start()
    server.seed()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slapd(ldap_root: Path, test_ca: TestCA) -> Iterator[Slapd]:
    """An OpenLDAP slapd, seeded once per session."""
    with running(Slapd(ldap_root / "slapd", test_ca)) as server:
        yield server


def ldap_source(raw: dict[str, Any], password: str) -> LdapSource:
    """An LdapSource built in-process from a source config and its bind password."""
    data = {**raw, "bind_password": TaggedSecret(password, "!env TEST")}
    return LdapSource(LdapSourceConfig.model_validate(data))


def ad_source(dc: SambaDC, ca_file: Path, **overrides: Any) -> dict[str, Any]:
    """An `ldap` source config for the Samba DC (the bind password is filled in by write)."""
    source: dict[str, Any] = {
        "id": "ad",
        "type": "ldap",
        "display_name": "Corp AD",
        "directory": "active_directory",
        "servers": [dc.url],
        "ca_file": str(ca_file),
        "bind_dn": dc.service_dn(),
        "bind_password": PASSWORD_MARK,
        "netbios_domain": NETBIOS,
        "user_search": {
            "base_dn": SAMBA_BASE,
            "filter": "(&(objectClass=user)(objectCategory=person))",
        },
    }
    source.update(overrides)
    return source


def openldap_source(server: Slapd, ca_file: Path, **overrides: Any) -> dict[str, Any]:
    """An `ldap` source config for slapd (uid/mail usernames, nested group search)."""
    source: dict[str, Any] = {
        "id": "openldap",
        "type": "ldap",
        "display_name": "Example LDAP",
        "directory": "openldap",
        "servers": [server.url],
        "ca_file": str(ca_file),
        "bind_dn": server.service_dn(),
        "bind_password": PASSWORD_MARK,
        "user_search": {
            "base_dn": f"ou=people,{SLAPD_BASE}",
            "filter": "(objectClass=inetOrgPerson)",
            "upn_attribute": None,
            "login_attribute": "uid",
            "mail_attribute": "mail",
            "username_forms": ["sam", "mail"],
            "id_attribute": "entryUUID",
            "username_attribute": "uid",
        },
        "group_search": {
            "mode": "search",
            "base_dn": f"ou=groups,{SLAPD_BASE}",
            "filter": "(objectClass=groupOfNames)",
        },
    }
    source.update(overrides)
    return source


def write_ldap_config(directory: Path, source: dict[str, Any], bind_password: str,
                      **overrides: Any) -> Path:
    """A bridge.yaml with this LDAP source (bind password via !envfile) and the test app."""
    path = write_config(directory, sources=[source], **overrides)
    secret = directory / "bind-password"
    secret.write_text(bind_password)
    os.chmod(secret, 0o600)
    text = path.read_text().replace(PASSWORD_MARK, f"!envfile {secret}")
    path.write_text(text)
    prepare(path)
    return path


@pytest.fixture(scope="module")
def ad_bridge(tmp_path_factory: pytest.TempPathFactory, samba: SambaDC,
              test_ca: TestCA) -> Iterator[LiveBridge]:
    """A bridge (gunicorn, 2 workers) whose only source is the Samba DC."""
    directory = tmp_path_factory.mktemp("ad-bridge") / "bridge"
    path = write_ldap_config(directory, ad_source(samba, test_ca.ca_file),
                             samba.users["svc-bridge"].password)
    with live_bridge(path) as server:
        yield server


@pytest.fixture(scope="module")
def openldap_bridge(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd,
                    test_ca: TestCA) -> Iterator[LiveBridge]:
    """A bridge whose only source is slapd."""
    directory = tmp_path_factory.mktemp("openldap-bridge") / "bridge"
    path = write_ldap_config(directory, openldap_source(slapd, test_ca.ca_file),
                             slapd.service_password)
    with live_bridge(path) as server:
        yield server


def cell(page: str, header: str) -> str:
    """The text of the test application's table cell after <th>header</th>."""
    match = re.search(rf"<th>{re.escape(header)}</th><td[^>]*>(.*?)</td>", page, re.S)
    assert match, f"no {header} row on the page"
    return html.unescape(match.group(1))


def change_form(client: requests.Session, url: str) -> dict[str, str]:
    """The hidden fields (and any username) of the change-password form at url."""
    page = client.get(url)
    assert page.status_code == 200
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'name="(csrf_token|ticket|request|username)"'
                                      r'[^>]*value="([^"]*)"', page.text)
    }


def submit_change(client: requests.Session, base: str, fields: dict[str, str], current: str,
                  new: str, confirm: str | None = None,
                  headers: dict[str, str] | None = None) -> requests.Response:
    """POST the change-password form: current password, new one, and its confirmation."""
    return client.post(base + "/password/change", headers=headers, data={
        **fields, "current_password": current, "new_password": new,
        "confirm_password": new if confirm is None else confirm,
    })


def error_text(response: requests.Response) -> str:
    """The sign-in page's error message."""
    match = re.search(r'id="error">(.*?)</p>', response.text, re.S)
    assert match, f"no error on the page (status {response.status_code})"
    return html.unescape(match.group(1))


def ldapsearch(url: str, ca_file: Path, bind_dn: str, password: str, base: str, flt: str,
               *attributes: str) -> dict[str, list[str]]:
    """Read one entry with OpenLDAP's own ldapsearch (an independent client)."""
    secret = ca_file.parent / f"pw-{os.getpid()}"
    secret.write_text(password)
    os.chmod(secret, 0o600)
    try:
        result = subprocess.run(
            ["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-x", "-H", url, "-D", bind_dn,
             "-y", str(secret), "-b", base, flt, *attributes],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "LDAPTLS_CACERT": str(ca_file)},
        )
    finally:
        secret.unlink()
    assert result.returncode == 0, result.stderr
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if ":" in line and not line.startswith(" "):
            name, _, value = line.partition(":")
            values.setdefault(name.lower(), []).append(value.strip())
    return values


def audit_outcomes(live: LiveBridge) -> list[tuple[str, str]]:
    """(username, outcome) of every sign-in event, oldest first, from the store."""
    import sqlite3

    with sqlite3.connect(live.config_path.parent / "data" / "bridge.db") as db:
        rows = db.execute(
            "SELECT username, outcome FROM audit WHERE event='sign-in' ORDER BY rowid"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]
