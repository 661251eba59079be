"""OAuth clients: the relying party's OIDC settings seen through Authlib's ClientMixin.

Secrets are 256-bit random values shown once and kept as SHA-256 digests: a random secret of
that size cannot be guessed from its digest, and checking it costs microseconds (the token
endpoint is the hot path; a password hash would dominate it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from authlib.oauth2.rfc6749 import ClientMixin
from pydantic import TypeAdapter, ValidationError

from bridge.relying_parties import (
    RELYING_PARTY_KIND,
    OidcRelyingParty,
    RelyingParty,
    RelyingPartyRegistry,
)

SECRET_BYTES = 32
JWKS_CACHE_SECONDS = 300
JWKS_MAX_BYTES = 64 * 1024
_PARTY = TypeAdapter(RelyingParty)


def generate_secret() -> tuple[str, str]:
    """A new client secret and the SHA-256 digest to store."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return secret, secret_digest(secret)


def secret_digest(secret: str) -> str:
    """The stored form of a client secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_matches(registered: str, given: str) -> bool:
    """Exact string comparison; only a loopback IP's port may differ (RFC 8252 section 7.3)."""
    if hmac.compare_digest(registered.encode(), given.encode()):
        return True
    try:
        a, b = urlsplit(registered), urlsplit(given)
        a_port, b_port = a.port, b.port  # noqa: F841 - raises ValueError on a bad port
    except ValueError:
        return False
    if a.scheme != "http" or b.scheme != "http":
        return False
    if not (_loopback(a.hostname) and a.hostname == b.hostname):
        return False
    if "@" in a.netloc or "@" in b.netloc:
        return False
    # Same host literal, path and query byte for byte; the port alone may vary.
    return (a.path, a.query, a.fragment) == (b.path, b.query, b.fragment) and (
        "#" not in given
    )


class OidcClient(ClientMixin):
    """One OIDC relying party as Authlib sees it."""

    def __init__(self, party: OidcRelyingParty):
        self.party = party
        self.client_id = party.client_id
        self.id_token_signed_response_alg = party.id_token_signed_response_alg

    def get_client_id(self) -> str:
        """The client identifier."""
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """None: every authorization request must name its redirect_uri (OIDC requires it)."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this client may have, in request order (others are dropped)."""
        if not scope:
            return ""
        allowed = set(self.party.scopes)
        seen: list[str] = []
        for item in scope.split():
            if item in allowed and item not in seen:
                seen.append(item)
        return " ".join(seen)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """True if the URI is registered for this client (exact match)."""
        if not isinstance(redirect_uri, str) or len(redirect_uri) > 2048:
            return False
        return any(redirect_uri_matches(r, redirect_uri) for r in self.party.redirect_uris)

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        """True if the URI is registered for after sign-out (exact match only)."""
        return isinstance(uri, str) and uri in self.party.post_logout_redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        """Compare the digest of the presented secret with the stored one in constant time."""
        stored = self.party.client_secret_sha256
        if not stored or not isinstance(client_secret, str) or len(client_secret) > 512:
            return False
        return hmac.compare_digest(secret_digest(client_secret), stored)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Only the client's registered authentication method is accepted, at every endpoint."""
        return method == self.party.auth_method

    def check_response_type(self, response_type: str) -> bool:
        """Only the code flow, and only for clients allowed the authorization_code grant."""
        return response_type == "code" and "authorization_code" in self.party.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        """True if the client is registered for this grant type."""
        return grant_type in self.party.grant_types

    @property
    def is_public(self) -> bool:
        """Public clients have no secret and must use PKCE."""
        return self.party.public

    @property
    def access_token_audience(self) -> str:
        """The `aud` of access tokens issued to this client for itself."""
        return self.party.access_token_audience or self.client_id


class ClientDirectory:
    """Finds OIDC clients by client_id: config files first, then the store.

    Parsing a stored relying party with pydantic costs more than the rest of a token request,
    so parsed models are kept per (key, version); the document itself is read every time, so
    an edit or removal on any node takes effect at once.
    """

    def __init__(self, registry: RelyingPartyRegistry, cache_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._recent: dict[str, tuple[float, OidcRelyingParty]] = {}
        self._static = {
            p.client_id: p for p in registry.static.values() if isinstance(p, OidcRelyingParty)
        }
        self._parsed: dict[tuple[str, int], OidcRelyingParty] = {}
        self._lock = threading.Lock()

    def party(self, client_id: str | None) -> OidcRelyingParty | None:
        """The enabled OIDC relying party with this client_id, or None."""
        if not client_id or not isinstance(client_id, str) or len(client_id) > 255:
            return None
        party = self._static.get(client_id)
        if party is None:
            party = self._recently_read(client_id) or self._stored(client_id)
        if party is None or not party.enabled:
            return None
        return party

    def _recently_read(self, client_id: str) -> OidcRelyingParty | None:
        # The token endpoint is the hot path: a found client is trusted for a few seconds
        # (oidc.client_cache_seconds) instead of reading the store on every request.
        if not self.cache_seconds:
            return None
        hit = self._recent.get(client_id)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        return None

    def _remember(self, client_id: str, party: OidcRelyingParty) -> OidcRelyingParty:
        if self.cache_seconds:
            if len(self._recent) > 4096:
                self._recent.clear()
            self._recent[client_id] = (self.clock() + self.cache_seconds, party)
        return party

    def client(self, client_id: str | None) -> OidcClient | None:
        """Authlib's view of the client, or None."""
        party = self.party(client_id)
        return OidcClient(party) if party else None

    def by_party_id(self, party_id: str) -> OidcRelyingParty | None:
        """The OIDC relying party with this registry id."""
        party = self.registry.get(party_id)
        return party if isinstance(party, OidcRelyingParty) else None

    def _stored(self, client_id: str) -> OidcRelyingParty | None:
        # `bridge rp add-oidc` stores a client under its client_id when that is a valid id.
        document = self.registry.store.get_document(RELYING_PARTY_KIND, client_id)
        if document is not None and client_id not in self.registry.static:
            party = self._parse(document.key, document.version, document.body)
            if party is not None and party.client_id == client_id:
                return self._remember(client_id, party)
        for party in self.registry.all():
            if isinstance(party, OidcRelyingParty) and party.client_id == client_id:
                return self._remember(client_id, party)
        return None

    def _parse(self, key: str, version: int, body: dict[str, Any]) -> OidcRelyingParty | None:
        cached = self._parsed.get((key, version))
        if cached is not None:
            return cached
        try:
            party = _PARTY.validate_python(body)
        except ValidationError:
            return None
        if not isinstance(party, OidcRelyingParty):
            return None
        with self._lock:
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[(key, version)] = party
        return party


class JwksFetcher:
    """Fetches a client's jwks_uri with a size and time bound, caching it for a few minutes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, timeout: float = 5.0):
        self.clock = clock
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._session = requests.Session()

    def get(self, uri: str, *, refresh: bool = False) -> dict[str, Any]:
        """The JWK Set at uri; raises ValueError if it cannot be had."""
        cached = self._cache.get(uri)
        if cached and not refresh and self.clock() - cached[0] < JWKS_CACHE_SECONDS:
            return cached[1]
        try:
            response = self._session.get(uri, timeout=self.timeout, stream=True)
            body = response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)
            response.close()
        except requests.RequestException as exc:
            raise ValueError(f"cannot fetch jwks_uri: {type(exc).__name__}") from exc
        if response.status_code != 200 or len(body) > JWKS_MAX_BYTES:
            raise ValueError("jwks_uri did not answer with a JWK Set")
        import json

        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError("jwks_uri did not answer with JSON") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("jwks_uri did not answer with a JWK Set")
        self._cache[uri] = (self.clock(), data)
        return data
