"""`bridge ldap test`: the first command an integrator runs against a customer's directory.

It checks each server on its own (TCP, TLS against the configured CA, the service account's
bind, the root DSE and the search base) and, with --user, looks a user up without a password
and prints the Identity the bridge would build, with the account's state.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from ldap3 import BASE

from bridge.sources import SourceUnavailable
from bridge.sources.ldap import LdapSource
from bridge.sources.ldap_config import LdapSourceConfig
from bridge.sources.ldap_pool import NETWORK_ERRORS, ServiceBindRefused


@click.group("ldap")
def ldap() -> None:
    """LDAP / Active Directory sources."""


def _check_server(source: LdapSource, index: int) -> dict[str, Any]:
    dc = source.pool.controllers[index]
    report: dict[str, Any] = {"server": dc.address.url, "ok": False}
    started = time.monotonic()
    try:
        connection = source.pool.open_connection(dc, "service")
    except ServiceBindRefused as exc:
        report["error"] = f"service account bind refused: {exc}"
        return report
    except NETWORK_ERRORS as exc:
        report["error"] = f"cannot connect: {type(exc).__name__}: {exc}"
        return report
    try:
        report["connect_and_bind_ms"] = round((time.monotonic() - started) * 1000, 1)
        report["tls"] = (
            "verified against " + (str(source.config.ca_file) if source.config.ca_file
                                   else "the system CAs")
            if source.config.uses_tls else "NONE (insecure_plain_ldap)"
        )
        peer = getattr(connection.socket, "getpeercert", None)
        if peer is not None:
            cert = peer() or {}
            report["certificate_subject"] = _name(cert.get("subject", ()))
            report["certificate_expires"] = cert.get("notAfter")
        connection.search("", "(objectClass=*)", search_scope=BASE,
                          attributes=["defaultNamingContext", "dnsHostName", "vendorName",
                                      "supportedLDAPVersion"])
        for item in connection.response or []:
            for name, values in item.get("raw_attributes", {}).items():
                report[name] = [v.decode(errors="replace") for v in values]
        base = source.config.user_search.base_dn
        connection.search(base, "(objectClass=*)", search_scope=BASE, attributes=["1.1"])
        if (connection.result or {}).get("result") == 0:
            report["user_search_base"] = "found"
            report["ok"] = True
        else:
            report["error"] = f"user_search.base_dn {base!r} not readable: " + str(
                (connection.result or {}).get("description"))
    finally:
        connection.unbind()
    return report


def _name(parts: Any) -> str:
    return ", ".join(f"{k}={v}" for rdn in parts for k, v in rdn)


@ldap.command("test")
@click.option("--source", "source_id", required=True, help="The id of an `ldap` source.")
@click.option("--user", "username", default=None, help="Look this user up (no password).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--config", "config_file", default=None, help="Config file.")
def test_command(source_id: str, username: str | None, as_json: bool,
                 config_file: str | None) -> None:
    """Check every server, TLS, the service account; optionally show a user's Identity."""
    from bridge.cli import _load

    config = _load(config_file)
    matches = [s for s in config.sources if s.id == source_id and isinstance(s, LdapSourceConfig)]
    if not matches:
        click.echo(f"error: no ldap source with id {source_id!r}", err=True)
        sys.exit(2)
    source = LdapSource(matches[0])
    servers = [_check_server(source, i) for i in range(len(source.pool.controllers))]
    result: dict[str, Any] = {"source": source_id, "servers": servers}
    healthy = any(s["ok"] for s in servers)
    if username is not None and healthy:
        try:
            found = source.lookup(username)
        except SourceUnavailable as exc:
            found, result["user_error"] = None, str(exc)
        if found is None:
            result["user"] = None
        else:
            identity, state = found
            record = identity.to_record()
            record.pop("authentication", None)
            result["user"] = record
            if state is not None:
                result["account_state"] = {
                    "disabled": state.disabled,
                    "locked": state.locked,
                    "account_expires": _iso(state.account_expires),
                    "password_expired": state.password_expired,
                    "must_change_password": state.must_change_password,
                    "password_expires": _iso(state.password_expires),
                }
    source.close()
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        _print(result)
    all_ok = all(s["ok"] for s in servers)
    user_missing = username is not None and not result.get("user")
    sys.exit(0 if all_ok and not user_missing else 1)


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _print(result: dict[str, Any]) -> None:
    for server in result["servers"]:
        status = "ok" if server["ok"] else "FAILED"
        click.echo(f"{server['server']}: {status}")
        for key, value in server.items():
            if key not in ("server", "ok"):
                click.echo(f"  {key}: {value}")
    if "user" in result:
        user = result["user"]
        if user is None:
            click.echo("user: not found (or more than one entry matches)")
            if result.get("user_error"):
                click.echo(f"  error: {result['user_error']}")
            return
        click.echo("user:")
        for key, value in user.items():
            click.echo(f"  {key}: {value}")
        for key, value in (result.get("account_state") or {}).items():
            click.echo(f"  state.{key}: {value}")
