"""The `oidc:` section of the bridge's config: issuer and token lifetimes."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from bridge.schema import Strict

IdTokenAlgorithm = Literal["ES256", "RS256"]


class OidcSettings(Strict):
    """Provider-wide OAuth 2.0 / OpenID Connect settings; relying parties may shorten lifetimes."""

    # Defaults to server.public_url; set it when the bridge is reached under another name.
    issuer: str | None = None
    code_seconds: int = Field(default=60, ge=10, le=600)
    access_token_seconds: int = Field(default=3600, ge=60, le=24 * 3600)
    id_token_seconds: int = Field(default=3600, ge=60, le=24 * 3600)
    refresh_token_seconds: int = Field(default=14 * 24 * 3600, ge=300, le=365 * 24 * 3600)
    id_token_signing_alg: IdTokenAlgorithm = "ES256"
    access_token_signing_alg: IdTokenAlgorithm = "ES256"
    # Seconds a client read from the store is reused without reading it again (the token
    # endpoint is the hot path); a change made on another node applies after at most this.
    client_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # How far the clocks of partners may disagree when checking their JWTs (client assertions).
    clock_skew_seconds: int = Field(default=60, ge=0, le=600)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")


OidcGrantType = Literal[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
]
OidcAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")


class _ClientFields:
    """The OIDC fields of a relying party, as check_client_settings reads them."""

    client_id: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    public: bool
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    auth_method: str
    jwks: dict | None
    jwks_uri: str | None


def _absolute_uri(uri: str) -> bool:
    # A registered redirect URI is absolute, has no fragment and no userinfo (RFC 6749 3.1.2).
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return False
    if not parts.scheme or parts.fragment or "#" in uri or any(c.isspace() for c in uri):
        return False
    if parts.scheme in ("http", "https"):
        return bool(parts.hostname) and "@" not in parts.netloc
    return True  # private-use schemes of native apps (com.example.app:/cb)


def check_client_settings(party: _ClientFields) -> None:
    """Raise ValueError when an OIDC client's settings contradict each other."""
    for field in ("redirect_uris", "post_logout_redirect_uris"):
        for uri in getattr(party, field):
            if len(uri) > 2048 or not _absolute_uri(uri):
                raise ValueError(f"{field}: {uri!r} is not an absolute URI without fragment")
    if party.public and party.auth_method != "none":
        raise ValueError("public clients authenticate with auth_method none (and PKCE)")
    if not party.public and party.auth_method == "none":
        raise ValueError("auth_method none is only for public clients (public: true)")
    if party.public and "client_credentials" in party.grant_types:
        raise ValueError("public clients cannot use the client_credentials grant")
    if party.auth_method == "private_key_jwt" and not (party.jwks or party.jwks_uri):
        raise ValueError("private_key_jwt needs jwks or jwks_uri")
    if party.jwks is not None and not isinstance(party.jwks.get("keys"), list):
        raise ValueError("jwks must be a JWK Set ({'keys': [...]})")
    if party.jwks_uri is not None and not party.jwks_uri.startswith(("https://", "http://")):
        raise ValueError("jwks_uri must be an http(s) URL")
    if "authorization_code" in party.grant_types and not party.redirect_uris:
        raise ValueError("the authorization_code grant needs at least one redirect_uri")
    for scope in party.scopes:
        if not SCOPE_TOKEN.match(scope):
            raise ValueError(f"scopes: {scope!r} is not a valid scope token")
