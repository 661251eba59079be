"""Relying parties: SAML SPs, OIDC clients, WS-Fed realms.

Those in `config/relying_parties/*.yaml` are read-only and overlay the ones admins manage in the
store (as Dex's static clients do). Protocol-specific settings grow with the SAML, OIDC and
Microsoft 365 issues; this module keeps the registry and the shared fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from bridge.config import ConfigError, load_yaml, validation_problems
from bridge.frontends.oidc.settings import OidcAuthMethod, OidcGrantType, check_client_settings
from bridge.frontends.saml.model import SamlServiceProviderSettings
from bridge.mapping import Rule, SubjectRule
from bridge.schema import Strict
from bridge.store import Document, Store, VersionConflict

RELYING_PARTY_KIND = "relying-party"
RP_ID_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"


class RelyingPartyBase(Strict):
    """Fields every relying party has, whatever its protocol."""

    id: str = Field(pattern=RP_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    enabled: bool = True
    sources: tuple[str, ...] = ()
    subject: SubjectRule = SubjectRule()
    release: tuple[Rule, ...] = ()


class SamlRelyingParty(RelyingPartyBase, SamlServiceProviderSettings):
    """A SAML 2.0 service provider (its protocol fields: bridge/frontends/saml/model.py)."""

    protocol: Literal["saml"]
    entity_id: str = Field(min_length=1, max_length=1024)


class OidcRelyingParty(RelyingPartyBase):
    """An OAuth 2.0 / OpenID Connect client."""

    protocol: Literal["oidc"]
    client_id: str = Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    redirect_uris: tuple[str, ...] = ()
    # OIDC client settings (bridge/frontends/oidc/settings.py checks them together).
    post_logout_redirect_uris: tuple[str, ...] = ()
    public: bool = False
    grant_types: tuple[OidcGrantType, ...] = ("authorization_code", "refresh_token")
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    auth_method: OidcAuthMethod = "client_secret_basic"
    # SHA-256 of the generated secret (`bridge rp add-oidc`); the secret itself is never kept.
    client_secret_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    id_token_signed_response_alg: Literal["ES256", "RS256"] | None = None
    access_token_audience: str | None = Field(default=None, min_length=1, max_length=1024)
    token_exchange_audiences: tuple[str, ...] = ()
    access_token_seconds: int | None = Field(default=None, ge=60, le=24 * 3600)
    id_token_seconds: int | None = Field(default=None, ge=60, le=24 * 3600)
    refresh_token_seconds: int | None = Field(default=None, ge=300, le=365 * 24 * 3600)

    @model_validator(mode="after")
    def _client_settings(self) -> OidcRelyingParty:
        check_client_settings(self)
        return self


class WsFedRelyingParty(RelyingPartyBase):
    """A WS-Federation passive realm (Microsoft 365 among others)."""

    protocol: Literal["wsfed"]
    realm: str = Field(min_length=1, max_length=1024)


RelyingParty = Annotated[
    SamlRelyingParty | OidcRelyingParty | WsFedRelyingParty, Field(discriminator="protocol")
]


# Building the validator is costly (~0.5 ms); it is immutable, so build it once.
_RELYING_PARTY_ADAPTER: TypeAdapter[RelyingParty] = TypeAdapter(RelyingParty)


def _parse(data: object, base_dir: Path) -> RelyingParty:
    return _RELYING_PARTY_ADAPTER.validate_python(data, context={"base_dir": base_dir})


def load_relying_party_files(directory: Path) -> list[RelyingParty]:
    """Read every `*.yaml` in the directory; ConfigError lists every problem of every file."""
    if not directory.is_dir():
        return []
    parties: list[RelyingParty] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for file in sorted(directory.glob("*.yaml")):
        file_problems: list[str] = []
        data = load_yaml(file, file_problems)
        if data is None and not file_problems:
            file_problems.append("the file is empty")
        if data is not None:
            try:
                party = _parse(data, file.parent)
            except ValidationError as exc:
                file_problems.extend(
                    validation_problems(exc, tags=frozenset({"saml", "oidc", "wsfed"}))
                )
            else:
                if party.id in seen:
                    file_problems.append(f"id: {party.id!r} is also defined in {seen[party.id]}")
                seen[party.id] = file
                parties.append(party)
        problems.extend(f"{file.name}: {p}" for p in file_problems)
    if problems:
        raise ConfigError(str(directory), problems)
    return parties


class RelyingPartyRegistry:
    """Every relying party: config files first (read-only), then those kept in the store."""

    def __init__(self, store: Store, static: list[RelyingParty]):
        self.store = store
        self.static = {party.id: party for party in static}

    def all(self) -> list[RelyingParty]:
        """Every relying party, config-defined ones overriding stored ones with the same id."""
        parties = dict(self.static)
        for document in self.store.list_documents(RELYING_PARTY_KIND):
            if document.key not in parties:
                try:
                    parties[document.key] = _parse(document.body, Path("."))
                except ValidationError:
                    continue  # a stored record from a newer version; shown by the admin tools
        return sorted(parties.values(), key=lambda party: party.id)

    def get(self, party_id: str) -> RelyingParty | None:
        """One relying party by id (one store read, not a listing)."""
        if party_id in self.static:
            return self.static[party_id]
        document = self.store.get_document(RELYING_PARTY_KIND, party_id)
        if document is None:
            return None
        try:
            return _parse(document.body, Path("."))
        except ValidationError:
            return None

    def is_read_only(self, party_id: str) -> bool:
        """True for relying parties defined in config files."""
        return party_id in self.static

    def save(self, party: RelyingParty, expected_version: int = 0) -> Document:
        """Store a relying party (0: must be new); config-defined ids cannot be overwritten."""
        if self.is_read_only(party.id):
            raise VersionConflict(f"{party.id} is defined in a config file and is read-only")
        body = party.model_dump(mode="json", by_alias=True, exclude_defaults=False)
        return self.store.save_document(RELYING_PARTY_KIND, party.id, body, expected_version)

    def remove(self, party_id: str) -> bool:
        """Delete a stored relying party; False if there is none. Config-defined ones refuse."""
        if self.is_read_only(party_id):
            raise VersionConflict(f"{party_id} is defined in a config file and is read-only")
        document = self.store.get_document(RELYING_PARTY_KIND, party_id)
        if document is None:
            return False
        self.store.delete_document(RELYING_PARTY_KIND, party_id, document.version)
        return True
