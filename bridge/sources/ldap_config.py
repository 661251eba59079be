"""Settings of an LDAP / Active Directory source, shaped like Dex's LDAP connector."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from bridge.schema import Secret, Strict, require_tagged_secret, resolve_path

SERVER_URL = re.compile(r"^(ldaps?)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(?::(\d{1,5}))?/?$")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-]{0,63}$|^\d+(\.\d+)+$")
UsernameForm = Literal["upn", "sam", "domain_sam", "mail"]


class ServerAddress(Strict):
    """One domain controller / directory server, parsed from its URL."""

    url: str
    use_ssl: bool
    host: str
    port: int


def parse_server_url(url: str) -> ServerAddress:
    """Split `ldaps://host[:port]` into its parts (ValueError when it is not one)."""
    match = SERVER_URL.match(url)
    if not match:
        raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL with a host")
    scheme, host, port = match.groups()
    port_number = int(port) if port else (636 if scheme == "ldaps" else 389)
    if not 0 < port_number < 65536:
        raise ValueError(f"{url!r} has an invalid port")
    return ServerAddress(
        url=url, use_ssl=scheme == "ldaps", host=host.strip("[]"), port=port_number
    )


def _check_attribute(name: str) -> str:
    if not ATTRIBUTE_NAME.match(name):
        raise ValueError(f"{name!r} is not an LDAP attribute name")
    return name


class UserSearch(Strict):
    """How a user is found (by the service account) and which attributes make the Identity."""

    base_dn: str = Field(min_length=1)
    # ANDed with the username match; `(objectClass=user)` style, never holds user input.
    filter: str = "(objectClass=person)"
    scope: Literal["subtree", "one"] = "subtree"
    # Which attribute each username form is matched against; a form without one is not tried.
    upn_attribute: str | None = "userPrincipalName"
    login_attribute: str = "sAMAccountName"
    mail_attribute: str | None = "mail"
    username_forms: list[UsernameForm] = Field(
        default_factory=lambda: ["upn", "sam", "domain_sam", "mail"], min_length=1
    )
    # The Identity: subject, canonical username, names, extra attributes.
    id_attribute: str = "objectGUID"
    username_attribute: str = "sAMAccountName"
    email_attribute: str = "mail"
    display_name_attribute: str = "displayName"
    given_name_attribute: str = "givenName"
    family_name_attribute: str = "sn"
    # None: Base64 of ms-DS-ConsistencyGuid, else objectGUID (what Entra Connect uses).
    immutable_id_attribute: str | None = None
    extra_attributes: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        value = value.strip()
        if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(
            ")"
        ):
            raise ValueError("must be one parenthesised LDAP filter, e.g. (objectClass=user)")
        return value

    @field_validator(
        "upn_attribute",
        "login_attribute",
        "mail_attribute",
        "id_attribute",
        "username_attribute",
        "email_attribute",
        "display_name_attribute",
        "given_name_attribute",
        "family_name_attribute",
        "immutable_id_attribute",
    )
    @classmethod
    def _attribute(cls, value: str | None) -> str | None:
        return None if value is None else _check_attribute(value)

    @field_validator("extra_attributes")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        return [_check_attribute(name) for name in value]


class GroupSearch(Strict):
    """How a user's groups (nested ones included) are found.

    `token_groups` (Active Directory): the user's tokenGroups read with a base search, then the
    SIDs resolved to groups: what AD FS does, and fast on large directories.
    `search` (any LDAP): groups whose `member_attribute` holds the user's DN, repeated for the
    groups found when `nested` is on. `member_of`: the user's memberOf values (and, when
    `nested`, the memberOf of those groups).
    """

    mode: Literal["token_groups", "search", "member_of"] = "token_groups"
    base_dn: str | None = None
    filter: str = "(objectClass=group)"
    member_attribute: str = "member"
    name_attribute: str = "cn"
    nested: bool = True
    max_depth: int = Field(default=8, ge=1, le=32)
    cache_seconds: int = Field(default=300, ge=0, le=86400)

    @field_validator("member_attribute", "name_attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        return _check_attribute(value)


class CircuitBreaker(Strict):
    """When a domain controller is set aside, and for how long."""

    failures: int = Field(default=1, ge=1, le=100)
    open_seconds: float = Field(default=30, ge=0.1, le=3600)


class LdapSourceConfig(Strict):
    """An LDAP directory or Active Directory domain as a password source."""

    type: Literal["ldap"]
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,31}$")
    display_name: str = "Active Directory"
    directory: Literal["active_directory", "openldap"] = "active_directory"
    servers: list[str] = Field(min_length=1, max_length=32)
    strategy: Literal["first", "round_robin"] = "first"
    start_tls: bool = False
    # Plain ldap:// without StartTLS sends passwords in clear text: only with this flag.
    insecure_plain_ldap: bool = False
    # The CA that signed the directory's certificates; None trusts the system's CAs.
    ca_file: Path | None = None
    bind_dn: str = Field(min_length=1)
    bind_password: Secret
    netbios_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,14}$")
    connect_timeout_seconds: float = Field(default=3, gt=0, le=60)
    # Whole seconds: ldap3 packs it into SO_RCVTIMEO as an integer.
    receive_timeout_seconds: int = Field(default=5, ge=1, le=120)
    pool_size: int = Field(default=8, ge=1, le=256)
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    password_expiry_warning_days: int = Field(default=14, ge=0, le=365)
    user_search: UserSearch
    group_search: GroupSearch = GroupSearch()

    @field_validator("bind_password", mode="before")
    @classmethod
    def _bind_password(cls, value: Any) -> Any:
        return require_tagged_secret(value)

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for url in value:
            parse_server_url(url)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = resolve_path(value, info)
        if not path.is_file():
            raise ValueError(f"CA file {path} does not exist")
        return path

    @model_validator(mode="after")
    def _transport(self) -> LdapSourceConfig:
        plain = [u for u in self.servers if u.startswith("ldap://")]
        if plain and not self.start_tls and not self.insecure_plain_ldap:
            raise ValueError(
                "ldap:// sends passwords in clear text: use ldaps://, set start_tls: true, "
                "or (tests only) insecure_plain_ldap: true"
            )
        if self.start_tls and any(u.startswith("ldaps://") for u in self.servers):
            raise ValueError("start_tls applies to ldap:// servers; ldaps:// is already TLS")
        if self.group_search.mode != "token_groups" and not self.group_search.base_dn:
            if self.group_search.mode == "search":
                raise ValueError("group_search.base_dn is required for mode: search")
        if self.group_search.mode == "token_groups" and self.directory != "active_directory":
            raise ValueError("group_search.mode token_groups needs directory: active_directory")
        return self

    @property
    def addresses(self) -> list[ServerAddress]:
        """The servers, parsed."""
        return [parse_server_url(url) for url in self.servers]

    @property
    def uses_tls(self) -> bool:
        """True when every connection is LDAPS or StartTLS."""
        return self.start_tls or all(u.startswith("ldaps://") for u in self.servers)
