"""The LDAP / Active Directory password source.

A sign-in is: find the user with the service account (a filter whose values are escaped per
RFC 4515, never a DN built from input), bind as the DN found on a pooled connection, then read
the account's state and groups with a base search. AD's bind sub-codes and computed state
attributes become outcomes; only those that prove the password right are shown to the user.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from ldap3 import BASE, LEVEL, MODIFY_ADD, MODIFY_DELETE, SIMPLE, SUBTREE, Connection
from ldap3.core.exceptions import LDAPCommunicationError, LDAPExceptionError
from ldap3.utils.conv import escape_filter_chars

from bridge.identity import Identity
from bridge.sources import (
    MAX_USERNAME_LENGTH,
    TOO_MANY_ATTEMPTS,
    WRONG_CREDENTIALS,
    Admission,
    AuthResult,
    Outcome,
    SourceUnavailable,
    credentials_acceptable,
)
from bridge.sources.ldap_ad import (
    STATE_ATTRIBUTES,
    AccountState,
    account_state,
    explain_password_change_refusal,
    outcome_for_bind_failure,
)
from bridge.sources.ldap_config import LdapSourceConfig
from bridge.sources.ldap_pool import ConnectionLost, ConnectionPool

log = logging.getLogger("bridge.sources.ldap")

RESULT_SUCCESS = 0
RESULT_SIZE_LIMIT = 4
RESULT_INVALID_CREDENTIALS = 49
RESULT_UNWILLING = 53
RESULT_NO_SUCH_OBJECT = 32
# Results that mean "this connection is gone", which ldap3 reports without raising.
CONNECTION_GONE = {51, 52, 80, 81}  # busy, unavailable, other, server down
BINARY_ATTRIBUTES = frozenset(
    {"objectguid", "objectsid", "ms-ds-consistencyguid", "tokengroups", "jpegphoto",
     "thumbnailphoto", "usercertificate", "msexchmailboxguid"}
)
GUID_ATTRIBUTES = frozenset({"objectguid", "ms-ds-consistencyguid"})
K = TypeVar("K")
V = TypeVar("V")


def escape_filter_value(value: str | bytes) -> str:
    """Escape a value for an LDAP filter (RFC 4515); bytes are escaped byte by byte."""
    if isinstance(value, bytes):
        return "".join(f"\\{b:02x}" for b in value)
    return escape_filter_chars(value)


def _lower_keys(raw: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    return {name.lower(): list(values) for name, values in raw.items()}


def _text(values: list[bytes] | None, binary: bool = False) -> list[str]:
    out = []
    for value in values or []:
        if binary:
            out.append(base64.b64encode(value).decode("ascii"))
            continue
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(base64.b64encode(value).decode("ascii"))
    return out


def _first(values: dict[str, list[bytes]], name: str | None) -> str | None:
    if not name:
        return None
    found = _text(values.get(name.lower()), name.lower() in BINARY_ATTRIBUTES)
    return found[0] if found else None


@dataclass(frozen=True)
class UserEntry:
    """A user entry as found by the service account."""

    dn: str
    values: dict[str, list[bytes]]


class _TtlCache(Generic[K, V]):
    """A small thread-safe map whose entries expire (group facts shared by sign-ins)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._items: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        """(True, value) while an entry is fresh, else (False, None)."""
        with self._lock:
            item = self._items.get(key)
        if item is None or item[0] < self.clock():
            return False, None
        return True, item[1]

    def put(self, key: K, value: V) -> None:
        """Remember a value for ttl seconds (the map is emptied past 50,000 entries)."""
        with self._lock:
            if len(self._items) > 50_000:
                self._items.clear()
            self._items[key] = (self.clock() + self.ttl, value)


# A group as (name, DN); a group's facts as (name, DN, the DNs of the groups holding it).
Group = tuple[str, str]
GroupFacts = tuple[str, str, tuple[str, ...]]


class LdapSource:
    """Password source over LDAP: Active Directory (with account states) or OpenLDAP."""

    def __init__(
        self,
        config: LdapSourceConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pool: ConnectionPool | None = None,
    ):
        self.config = config
        self.id = config.id
        self.display_name = config.display_name
        self.clock = clock
        self.pool = pool or ConnectionPool(config)
        cache_seconds = config.group_search.cache_seconds
        # What a group is called and which groups hold it changes rarely and is the same for
        # every member: kept for cache_seconds, so a sign-in reads only the user's own groups.
        self._groups: _TtlCache[bytes, Group | None] = _TtlCache(cache_seconds)
        self._parents: _TtlCache[str, tuple[Group, ...]] = _TtlCache(cache_seconds)
        self._group_facts: _TtlCache[str, GroupFacts | None] = _TtlCache(cache_seconds)
        self.is_ad = config.directory == "active_directory"

    # Finding users.

    def user_filter(self, username: str) -> str | None:
        """The search filter for a username as typed, or None if no form can match it."""
        search = self.config.user_search
        name = username.strip()
        if not name or len(name) > MAX_USERNAME_LENGTH:
            return None
        forms = set(search.username_forms)
        clauses: list[str] = []
        if "\\" in name:
            domain, _, account = name.partition("\\")
            netbios = self.config.netbios_domain
            if "domain_sam" not in forms or not netbios or not account:
                return None
            if domain.lower() != netbios.lower():
                return None
            clauses.append(f"({search.login_attribute}={escape_filter_value(account)})")
        else:
            if "@" in name:
                if "upn" in forms and search.upn_attribute:
                    clauses.append(f"({search.upn_attribute}={escape_filter_value(name)})")
                if "mail" in forms and search.mail_attribute:
                    clauses.append(f"({search.mail_attribute}={escape_filter_value(name)})")
            # AD forbids '@' in sAMAccountName; other directories may allow it in uid.
            if "sam" in forms and not (self.is_ad and "@" in name):
                clauses.append(f"({search.login_attribute}={escape_filter_value(name)})")
        if not clauses:
            return None
        match = clauses[0] if len(clauses) == 1 else "(|" + "".join(clauses) + ")"
        return f"(&{search.filter}{match})"

    def _search_attributes(self) -> list[str]:
        search = self.config.user_search
        names = [
            search.id_attribute,
            search.username_attribute,
            search.email_attribute,
            search.display_name_attribute,
            search.given_name_attribute,
            search.family_name_attribute,
            *search.extra_attributes,
        ]
        if search.upn_attribute:
            names.append(search.upn_attribute)
        if search.immutable_id_attribute:
            names.append(search.immutable_id_attribute)
        elif self.is_ad:
            names += ["ms-DS-ConsistencyGuid", "objectGUID"]
        if self.config.group_search.mode == "member_of":
            names.append("memberOf")
        return sorted(set(names), key=str.lower)

    def _search(self, connection: Connection, base: str, flt: str, scope: str,
                attributes: Iterable[str], size_limit: int = 0) -> tuple[int, list[UserEntry]]:
        ok = connection.search(
            base, flt, search_scope=scope, attributes=list(attributes), size_limit=size_limit
        )
        result = connection.result or {}
        code = result.get("result", 80)
        if not ok and code in CONNECTION_GONE:
            raise ConnectionLost(f"{result.get('description')}: {result.get('message')}")
        entries = [
            UserEntry(item["dn"], _lower_keys(item.get("raw_attributes", {})))
            for item in connection.response or []
            if item.get("type") == "searchResEntry"
        ]
        return code, entries

    def find_user(self, username: str) -> UserEntry | None:
        """The one entry a username denotes, or None (not found, or ambiguous)."""
        flt = self.user_filter(username)
        if flt is None:
            return None
        search = self.config.user_search
        scope = SUBTREE if search.scope == "subtree" else LEVEL
        attributes = self._search_attributes()

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(connection, search.base_dn, flt, scope, attributes, 2)

        code, entries = self.pool.run("service", op)
        if code == RESULT_NO_SUCH_OBJECT:
            log.error("user search base does not exist", extra={"source": self.id})
            return None
        if code not in (RESULT_SUCCESS, RESULT_SIZE_LIMIT):
            log.error("user search failed", extra={"source": self.id, "ldap_result": code})
            return None
        if len(entries) != 1:
            if len(entries) > 1:
                log.warning("username matches more than one entry", extra={"source": self.id})
            return None
        return entries[0]

    def find_by_subject(self, subject: str) -> UserEntry | None:
        """The entry whose id attribute is this subject (for refresh)."""
        search = self.config.user_search
        value: str | bytes = subject
        if search.id_attribute.lower() in GUID_ATTRIBUTES:
            try:
                value = uuid.UUID(subject).bytes_le
            except ValueError:
                return None
        flt = f"(&{search.filter}({search.id_attribute}={escape_filter_value(value)}))"
        attributes = self._search_attributes()

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(connection, search.base_dn, flt, SUBTREE, attributes, 2)

        code, entries = self.pool.run("service", op)
        return entries[0] if code == RESULT_SUCCESS and len(entries) == 1 else None

    # Signing in.

    def _bind(self, dn: str, password: str) -> tuple[bool, dict[str, Any]]:
        return self.pool.run("user", lambda connection: rebind(connection, dn, password))

    def _bind_outcome(self, ok: bool, result: dict[str, Any]) -> Outcome:
        if ok:
            return Outcome.SUCCESS
        code = result.get("result")
        if code in (RESULT_INVALID_CREDENTIALS, RESULT_UNWILLING):
            if self.is_ad:
                return outcome_for_bind_failure(result.get("message"))
            return Outcome.INVALID_CREDENTIALS
        # strongerAuthRequired, confidentialityRequired, ...: the directory will not take a
        # simple bind here; no password can fix that, so it is an operator's problem.
        log.error(
            "directory refused the user bind",
            extra={"source": self.id, "ldap_result": code, "error": result.get("description")},
        )
        raise SourceUnavailable(f"bind refused: {result.get('description')}")

    def authenticate(
        self, username: str, password: str, admit: Admission | None = None
    ) -> AuthResult:
        """Check a password by binding as the user found; never raises for a wrong one."""
        if not credentials_acceptable(username, password):
            return AuthResult(Outcome.REJECTED_INPUT)
        entry = self.find_user(username)
        if entry is None:
            return AuthResult(Outcome.UNKNOWN_USER)
        if admit is not None and not admit(self._account(entry)):
            return AuthResult(Outcome.THROTTLED)
        outcome = self._bind_outcome(*self._bind(entry.dn, password))
        if outcome is not Outcome.SUCCESS:
            return AuthResult(outcome)
        state, token_groups = self._read_state(entry.dn)
        if state is not None:
            blocking = state.blocking_outcome(self.clock())
            if blocking is not None:
                return AuthResult(blocking)
        identity = self.identity(entry, token_groups)
        return AuthResult(Outcome.SUCCESS, identity, self._expiry_warning(state))

    def _account(self, entry: UserEntry) -> str:
        """The login name of an entry (sAMAccountName, uid), whatever name found it."""
        return _first(entry.values, self.config.user_search.username_attribute) or entry.dn

    def _expiry_warning(self, state: AccountState | None) -> datetime | None:
        if state is None or state.password_expires is None:
            return None
        window = timedelta(days=self.config.password_expiry_warning_days)
        return state.password_expires if state.password_expires - self.clock() <= window else None

    def _read_state(self, dn: str) -> tuple[AccountState | None, list[bytes]]:
        """AD: the account state and tokenGroups, read with one base search."""
        if not self.is_ad:
            return None, []
        attributes = list(STATE_ATTRIBUTES)
        if self.config.group_search.mode == "token_groups":
            attributes.append("tokenGroups")

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(connection, dn, "(objectClass=*)", BASE, attributes)

        code, entries = self.pool.run("service", op)
        if code != RESULT_SUCCESS or len(entries) != 1:
            raise SourceUnavailable(f"cannot read the account state (result {code})")
        values = entries[0].values
        return account_state(values), values.get("tokengroups", [])

    # Building the Identity.

    def identity(self, entry: UserEntry, token_groups: list[bytes]) -> Identity:
        """The canonical Identity of a user entry."""
        search = self.config.user_search
        values = entry.values
        subject = self._subject(values)
        names, dns = self._groups_of(entry, token_groups)
        attributes = {
            name: tuple(_text(values.get(name.lower()), name.lower() in BINARY_ATTRIBUTES))
            for name in search.extra_attributes
            if values.get(name.lower())
        }
        return Identity(
            subject=subject,
            username=self._account(entry),
            source=self.id,
            upn=_first(values, search.upn_attribute),
            email=_first(values, search.email_attribute),
            display_name=_first(values, search.display_name_attribute),
            given_name=_first(values, search.given_name_attribute),
            family_name=_first(values, search.family_name_attribute),
            groups=names,
            group_dns=dns,
            immutable_id=self._immutable_id(values),
            attributes=attributes,
        )

    def _subject(self, values: dict[str, list[bytes]]) -> str:
        name = self.config.user_search.id_attribute.lower()
        raw = (values.get(name) or [b""])[0]
        if not raw:
            raise SourceUnavailable(f"user entry has no {self.config.user_search.id_attribute}")
        if name in GUID_ATTRIBUTES and len(raw) == 16:
            return str(uuid.UUID(bytes_le=raw))
        if name in BINARY_ATTRIBUTES:
            return base64.b64encode(raw).decode("ascii")
        return raw.decode("utf-8", errors="replace")

    def _immutable_id(self, values: dict[str, list[bytes]]) -> str | None:
        configured = self.config.user_search.immutable_id_attribute
        if configured:
            raw = (values.get(configured.lower()) or [None])[0]
            if raw is None:
                return None
            if configured.lower() in BINARY_ATTRIBUTES:
                return base64.b64encode(raw).decode("ascii")
            return raw.decode("utf-8", errors="replace")  # a string attribute, taken as it is
        if not self.is_ad:
            return None
        # Entra Connect's sourceAnchor: ms-DS-ConsistencyGuid if set, else objectGUID; the
        # raw bytes are already in Windows GUID layout.
        for name in ("ms-ds-consistencyguid", "objectguid"):
            raw = (values.get(name) or [None])[0]
            if raw:
                return base64.b64encode(raw).decode("ascii")
        return None

    def _groups_of(
        self, entry: UserEntry, token_groups: list[bytes]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        mode = self.config.group_search.mode
        if mode == "token_groups":
            found = self._resolve_sids(token_groups)
        elif mode == "member_of":
            found = self._member_of(entry)
        else:
            found = self._search_groups(entry.dn)
        pairs = sorted(set(found), key=lambda p: (p[0].lower(), p[1].lower()))
        return tuple(name for name, _ in pairs), tuple(dn for _, dn in pairs)

    def _group_base(self) -> str:
        return self.config.group_search.base_dn or self.config.user_search.base_dn

    def _resolve_sids(self, sids: list[bytes]) -> list[Group]:
        found: list[Group] = []
        missing: list[bytes] = []
        for sid in sids:
            known, value = self._groups.get(sid)
            if not known:
                missing.append(sid)
            elif value is not None:
                found.append(value)
        name_attribute = self.config.group_search.name_attribute
        for start in range(0, len(missing), 100):
            chunk = missing[start : start + 100]
            flt = "(|" + "".join(f"(objectSid={escape_filter_value(s)})" for s in chunk) + ")"

            def op(connection: Connection, flt: str = flt) -> tuple[int, list[UserEntry]]:
                return self._search(
                    connection, self._group_base(), flt, SUBTREE, [name_attribute, "objectSid"]
                )

            _, entries = self.pool.run("service", op)
            resolved: dict[bytes, Group] = {}
            for group in entries:
                sid = (group.values.get("objectsid") or [b""])[0]
                name = _first(group.values, name_attribute) or group.dn
                resolved[sid] = (name, group.dn)
            for sid in chunk:
                # SIDs outside the group base (e.g. well-known ones) are remembered as absent.
                self._groups.put(sid, resolved.get(sid))
                if sid in resolved:
                    found.append(resolved[sid])
        return found

    def _with_ancestors(
        self, direct: Iterable[Group], parents_of: Callable[[str], Iterable[Group]]
    ) -> list[Group]:
        """The user's own groups and, when nested, the groups holding them (max_depth levels)."""
        groups = self.config.group_search
        found: dict[str, Group] = {}
        frontier: list[str] = []
        for name, dn in direct:
            if dn.lower() not in found:
                found[dn.lower()] = (name, dn)
                frontier.append(dn)
        for _ in range(1, groups.max_depth if groups.nested else 1):
            next_frontier: list[str] = []
            for dn in frontier:
                for name, parent in parents_of(dn):
                    if parent.lower() not in found:
                        found[parent.lower()] = (name, parent)
                        next_frontier.append(parent)
            if not next_frontier:
                break
            frontier = next_frontier
        return list(found.values())

    def _groups_holding(self, member_dn: str) -> list[Group]:
        """Groups whose member attribute holds this DN: one subtree search."""
        groups = self.config.group_search
        flt = f"(&{groups.filter}({groups.member_attribute}={escape_filter_value(member_dn)}))"

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(
                connection, self._group_base(), flt, SUBTREE, [groups.name_attribute]
            )

        _, entries = self.pool.run("service", op)
        return [(_first(g.values, groups.name_attribute) or g.dn, g.dn) for g in entries]

    def _cached_groups_holding(self, group_dn: str) -> tuple[Group, ...]:
        known, parents = self._parents.get(group_dn.lower())
        if not known or parents is None:
            parents = tuple(self._groups_holding(group_dn))
            self._parents.put(group_dn.lower(), parents)
        return parents

    def _search_groups(self, user_dn: str) -> list[Group]:
        return self._with_ancestors(self._groups_holding(user_dn), self._cached_groups_holding)

    def _facts(self, group_dn: str) -> GroupFacts | None:
        """A group's name and memberOf, from a base search (cached)."""
        known, facts = self._group_facts.get(group_dn.lower())
        if known:
            return facts
        name_attribute = self.config.group_search.name_attribute

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(connection, group_dn, "(objectClass=*)", BASE,
                                [name_attribute, "memberOf"])

        _, entries = self.pool.run("service", op)
        facts = None
        if entries:
            group = entries[0]
            facts = (_first(group.values, name_attribute) or group.dn, group.dn,
                     tuple(_text(group.values.get("memberof"))))
        self._group_facts.put(group_dn.lower(), facts)
        return facts

    def _groups_named(self, dns: Iterable[str]) -> list[Group]:
        return [(facts[0], facts[1]) for facts in map(self._facts, dns) if facts is not None]

    def _member_of(self, entry: UserEntry) -> list[Group]:
        def parents_of(dn: str) -> list[Group]:
            facts = self._facts(dn)
            return self._groups_named(facts[2]) if facts else []

        return self._with_ancestors(
            self._groups_named(_text(entry.values.get("memberof"))), parents_of
        )

    # Refresh, lookup, password change, health.

    def refresh(self, identity: Identity) -> Identity | None:
        """Re-read a signed-in user's groups and state; None if they may no longer sign in."""
        entry = self.find_by_subject(identity.subject)
        if entry is None:
            return None
        state, token_groups = self._read_state(entry.dn)
        if state is not None and state.blocking_outcome(self.clock()) is not None:
            return None
        fresh = self.identity(entry, token_groups)
        if identity.authentication is not None:
            fresh = fresh.with_authentication(identity.authentication)
        return fresh

    def lookup(self, username: str) -> tuple[Identity, AccountState | None] | None:
        """Find a user without a password (`bridge ldap test --user`): Identity and state."""
        entry = self.find_user(username)
        if entry is None:
            return None
        state, token_groups = self._read_state(entry.dn)
        return self.identity(entry, token_groups), state

    def change_password(
        self, username: str, old_password: str, new_password: str,
        admit: Admission | None = None,
    ) -> str | None:
        """Change a user's password as that user; None on success, else why it was refused.

        On AD this is a unicodePwd delete (old) + add (new) in one modify, so AD checks the old
        password and enforces history and complexity (a reset would skip both). A user whose
        password has expired or must change cannot bind; AD still verifies the old value in the
        delete, so the modify is then sent on the service account's connection.
        """
        if not credentials_acceptable(username, old_password):
            return WRONG_CREDENTIALS
        if not credentials_acceptable(username, new_password):
            return "The new password cannot be blank or contain control characters."
        entry = self.find_user(username)
        if entry is None:
            return WRONG_CREDENTIALS
        if admit is not None and not admit(self._account(entry)):
            return TOO_MANY_ATTEMPTS
        dn = entry.dn
        if self.is_ad:
            changes = {
                "unicodePwd": [
                    (MODIFY_DELETE, [f'"{old_password}"'.encode("utf-16-le")]),
                    (MODIFY_ADD, [f'"{new_password}"'.encode("utf-16-le")]),
                ]
            }

            def modify(connection: Connection) -> dict[str, Any]:
                connection.modify(dn, changes)
                return dict(connection.result or {})

            def as_user(connection: Connection) -> tuple[Outcome, dict[str, Any]]:
                ok, bind_result = rebind(connection, dn, old_password)
                outcome = self._bind_outcome(ok, bind_result)
                if outcome is not Outcome.SUCCESS:
                    return outcome, bind_result
                return outcome, modify(connection)

            outcome, result = self.pool.run("user", as_user)
            if outcome in (Outcome.MUST_CHANGE_PASSWORD, Outcome.PASSWORD_EXPIRED):
                result = self.pool.run("service", modify)
            elif outcome is not Outcome.SUCCESS:
                return _refusal_for(outcome)
        else:
            def extended(connection: Connection) -> dict[str, Any]:
                ok, _ = rebind(connection, dn, old_password)
                if not ok:
                    return {"result": RESULT_INVALID_CREDENTIALS, "message": "52e"}
                connection.extend.standard.modify_password(dn, old_password, new_password)
                return dict(connection.result or {})

            result = self.pool.run("user", extended)
        if result.get("result") == RESULT_SUCCESS:
            log.info("password changed", extra={"source": self.id})
            return None
        log.info(
            "password change refused",
            extra={"source": self.id, "ldap_result": result.get("result"),
                   "error": (result.get("message") or "")[:200]},
        )
        if result.get("result") == RESULT_INVALID_CREDENTIALS:
            return WRONG_CREDENTIALS
        return explain_password_change_refusal(result.get("message"))

    def check(self) -> None:
        """Raise if no directory server answers a search as the service account."""

        def op(connection: Connection) -> tuple[int, list[UserEntry]]:
            return self._search(connection, "", "(objectClass=*)", BASE, ["vendorName"])

        code, _ = self.pool.run("service", op)
        if code != RESULT_SUCCESS:
            raise SourceUnavailable(f"root DSE read failed with result {code}")

    def close(self) -> None:
        """Close pooled connections."""
        self.pool.close()


def rebind(connection: Connection, dn: str, password: str) -> tuple[bool, dict[str, Any]]:
    """Bind an open pooled connection as dn (a new bind on the same socket); never raises
    for a refused password."""
    connection.user = dn
    connection.password = password
    connection.authentication = SIMPLE
    try:
        ok = connection.bind()
        result = dict(connection.result or {})
    except LDAPCommunicationError:
        raise
    except LDAPExceptionError as exc:
        # ldap3 refuses some inputs itself before sending anything: a wrong password, then.
        ok, result = False, {"result": RESULT_INVALID_CREDENTIALS, "message": str(exc)[:100]}
    finally:
        connection.password = None  # never keep a user's password on a pooled connection
    if not ok and result.get("result") in CONNECTION_GONE:
        raise ConnectionLost(str(result.get("description")))
    return ok, result


def _refusal_for(outcome: Outcome) -> str:
    if outcome is Outcome.DISABLED:
        return "This account is disabled. Contact your administrator."
    if outcome is Outcome.ACCOUNT_EXPIRED:
        return "This account has expired. Contact your administrator."
    return WRONG_CREDENTIALS
