"""The provider: Authlib's authorization server wired to the bridge's store, keys and clients.

`OidcProvider` owns the Authlib `AuthorizationServer` (grants, client authentication,
introspection and revocation endpoints) and the pieces Authlib leaves to the application:
minting RFC 9068 access tokens and ID tokens, persisting grants, and revoking them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import InvalidScopeError, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Response
from flask import request as flask_request

from bridge.frontends.oidc import grants
from bridge.frontends.oidc.clients import ClientDirectory, JwksFetcher, OidcClient
from bridge.frontends.oidc.grants import (
    CLIENT_AUTH_METHODS,
    GRANT_KIND,
    REFRESH_KIND,
    GrantUser,
)
from bridge.frontends.oidc.settings import SCOPE_TOKEN, OidcSettings
from bridge.frontends.oidc.tokens import (
    ACCESS_TOKEN_TYPE,
    TokenInvalid,
    TokenSigner,
    VerifiedToken,
    compact_json,
    digest,
    half_hash,
    new_jti,
)
from bridge.identity import Identity
from bridge.keys import KeyRing
from bridge.mapping import AccessDenied, release
from bridge.relying_parties import OidcRelyingParty, RelyingPartyRegistry
from bridge.sources import RefreshableSource
from bridge.store import Store

log = logging.getLogger("bridge.oidc")
REVOKED_KIND = "oidc-revoked-jti"
JSON_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]
ENDPOINT_PATHS = {
    "authorization_endpoint": "/oauth2/authorize",
    "token_endpoint": "/oauth2/token",
    "userinfo_endpoint": "/oauth2/userinfo",
    "jwks_uri": "/oauth2/jwks",
    "introspection_endpoint": "/oauth2/introspect",
    "revocation_endpoint": "/oauth2/revoke",
    "end_session_endpoint": "/oauth2/logout",
}


# What Authlib's grants fill in while they handle a request.
_UNSET_REQUEST_ATTRIBUTES = ("client", "auth_method", "user", "authorization_code",
                             "refresh_token", "credential", "_scope")


def _init_request(
    request: OAuth2Request, method: str, uri: str, headers: Any, payload: OAuth2Payload
) -> None:
    """The attributes OAuth2Request.__init__ sets, without its https check on the URI."""
    request.method = method
    request.uri = uri
    request.headers = headers
    request._body = None
    request.payload = payload
    for name in _UNSET_REQUEST_ATTRIBUTES:
        setattr(request, name, None)


class FlaskPayload(FlaskOAuth2Payload):
    """Authlib's view of the request parameters, merged once per request.

    Authlib reads `payload.data` several times per token request; each read through Flask's
    `request.values` costs a descriptor call, so the merged parameters are kept.
    """

    @cached_property
    def data(self) -> Any:  # type: ignore[override]
        """Query and form parameters together (werkzeug's `request.values`)."""
        return self._request.values


class BridgeFlaskRequest(FlaskOAuth2Request):
    """Flask's request for Authlib, without Authlib's https check.

    Whether the bridge is reached over TLS is decided by its public URL (and a trusted proxy),
    not by the scheme the WSGI server saw behind a TLS-terminating proxy.
    """

    def __init__(self, request: Any):
        # The URI is the path only: building the full URL is costly and nothing here reads it.
        _init_request(self, request.method, request.path, request.headers, FlaskPayload(request))
        self._request = request


class StoredAuthorizationRequest(OAuth2Request):
    """An authorization request rebuilt from the parameters kept in a LoginRequest."""

    def __init__(self, uri: str, params: dict[str, str]):
        _init_request(self, "GET", uri, {}, BasicOAuth2Payload(params))

    @property
    def args(self) -> dict[str, str]:
        """The request's parameters."""
        return self.payload.data

    @property
    def form(self) -> dict[str, str]:
        """Authorization requests have no form body here."""
        return {}


class BridgeAuthorizationServer(AuthorizationServer):
    """Authlib's Flask authorization server, answering with the bridge's JSON conventions."""

    def __init__(self, provider: OidcProvider):
        super().__init__()
        self.provider = provider

    def query_client(self, client_id: str) -> OidcClient | None:
        """Look the client up in config files and the store."""
        return self.provider.clients.client(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Persist what the token needs (grant and refresh records)."""
        self.provider.save_token(token, request)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        """Use a rebuilt request as it is; otherwise wrap Flask's."""
        if isinstance(request, OAuth2Request):
            return request
        # The request object itself, not Flask's proxy: Authlib reads it a dozen times.
        return BridgeFlaskRequest(flask_request._get_current_object())  # type: ignore[attr-defined]

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        """JSON bodies with compact separators; headers as given."""
        if isinstance(payload, dict):
            payload = compact_json(payload)
        return Response(payload, status=status_code, headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal subscribers: skip blinker on the hot path."""

    def validate_requested_scope(self, scope: str | None) -> None:
        """Scope tokens must be RFC 6749 section 3.3 characters (unknown ones are dropped later)."""
        if scope and not all(SCOPE_TOKEN.match(item) for item in scope.split(" ") if item):
            raise InvalidScopeError()


@dataclass
class IntrospectedToken:
    """A token found for introspection or revocation."""

    kind: str
    client_id: str
    claims: dict[str, Any]
    key: str
    expires_at: float

    def check_client(self, client: OidcClient) -> bool:
        """Revocation is only for the client the token was issued to."""
        return self.client_id == client.get_client_id()

    def is_expired(self) -> bool:
        """Expiry was checked when the token was found."""
        return False

    def is_revoked(self) -> bool:
        """Revocation was checked when the token was found."""
        return False


class BridgeIntrospection(IntrospectionEndpoint):
    """RFC 7662 for our access and refresh tokens; callers must authenticate."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        """Find an active access or refresh token."""
        return self.server.provider.find_token(token_string, token_type_hint)

    def check_permission(self, token: IntrospectedToken, client: OidcClient, request: Any) -> bool:
        """The client the token was issued to, or the resource server it is meant for."""
        if token.client_id == client.get_client_id():
            return True
        audience = token.claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        return client.access_token_audience in audiences

    def introspect_token(self, token: IntrospectedToken) -> dict[str, Any]:
        """RFC 7662 members for an active token."""
        claims = token.claims
        payload = {
            "active": True,
            "client_id": token.client_id,
            "scope": claims.get("scope", ""),
            "sub": claims.get("sub"),
            "exp": int(token.expires_at),
            "iss": self.server.provider.issuer,
            "token_type": "Bearer" if token.kind == "access_token" else "refresh_token",
        }
        for name in ("aud", "iat", "jti", "auth_time", "act"):
            if name in claims:
                payload[name] = claims[name]
        return payload


class BridgeRevocation(RevocationEndpoint):
    """RFC 7009: access tokens by jti until they expire; refresh tokens with their grant."""

    CLIENT_AUTH_METHODS = [*CLIENT_AUTH_METHODS, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        """Find an active access or refresh token."""
        return self.server.provider.find_token(token_string, token_type_hint)

    def revoke_token(self, token: IntrospectedToken, request: Any) -> None:
        """Revoke the token (and, for a refresh token, the whole grant)."""
        self.server.provider.revoke(token)


class OidcProvider:
    """The OpenID provider: Authlib's server plus token minting and grant persistence."""

    def __init__(
        self,
        settings: OidcSettings,
        public_url: str,
        store: Store,
        keys: KeyRing,
        registry: RelyingPartyRegistry,
        sources: Sequence[Any] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.issuer = settings.issuer or public_url
        self.store = store
        self.sources = {getattr(s, "id", None): s for s in sources}
        self.clock = clock
        self.signer = TokenSigner(keys, self.issuer, lambda: self.clock())
        self.clients = ClientDirectory(registry, settings.client_cache_seconds)
        self.jwks_fetcher = JwksFetcher()
        self.used_marker_seconds = max(settings.code_seconds * 10, 600)
        self.server = self._build_server()

    def _build_server(self) -> BridgeAuthorizationServer:
        server = BridgeAuthorizationServer(self)
        server.register_token_generator("default", self.generate_token)
        server.register_client_auth_method("private_key_jwt", grants.PrivateKeyJwt(self))
        server.register_grant(
            grants.AuthorizationCodeGrant,
            [grants.S256CodeChallenge(required=True), grants.OpenIDCodeExtension(self)],
        )
        server.register_grant(grants.RefreshTokenGrant)
        server.register_grant(grants.ClientCredentialsGrant)
        server.register_grant(grants.TokenExchangeGrant)
        server.register_endpoint(BridgeIntrospection)
        server.register_endpoint(BridgeRevocation)
        return server

    # -- URLs ----------------------------------------------------------------------------------

    def url(self, name: str) -> str:
        """Absolute URL of one of the provider's endpoints (discovery names)."""
        return self.issuer + ENDPOINT_PATHS[name]

    def assertion_audiences(self) -> list[str]:
        """Where a client assertion may be addressed: the issuer or an endpoint taking one."""
        names = ("token_endpoint", "introspection_endpoint", "revocation_endpoint")
        return [self.issuer, *(self.url(n) for n in names)]

    # -- lifetimes -----------------------------------------------------------------------------

    def _party(self, client: OidcClient | None) -> OidcRelyingParty | None:
        return client.party if client is not None else None

    def access_seconds(self, party: OidcRelyingParty | None) -> int:
        """Access token lifetime for a client."""
        return (party and party.access_token_seconds) or self.settings.access_token_seconds

    def refresh_seconds(self, party: OidcRelyingParty | None) -> int:
        """Refresh token lifetime for a client."""
        return (party and party.refresh_token_seconds) or self.settings.refresh_token_seconds

    def refresh_seconds_for(self, client_id: str) -> int:
        """Refresh token lifetime for a client id."""
        return self.refresh_seconds(self.clients.party(client_id))

    # -- minting -------------------------------------------------------------------------------

    def generate_token(
        self,
        grant_type: str,
        client: OidcClient,
        user: GrantUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Authlib's token generator: an RFC 9068 JWT access token and maybe a refresh token."""
        party = client.party
        now = int(self.clock())
        lifetime = expires_in or self.access_seconds(party)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.subject if user else client.client_id,
            "aud": client.access_token_audience,
            "client_id": client.client_id,
            "iat": now,
            "exp": now + lifetime,
            "jti": new_jti(),
        }
        if scope:
            claims["scope"] = scope
        if user is not None:
            claims["gid"] = user.grant_id
            if user.auth_time:
                claims["auth_time"] = user.auth_time
        token: dict[str, Any] = {
            "access_token": self.signer.sign(
                claims, self.settings.access_token_signing_alg, typ=ACCESS_TOKEN_TYPE
            ),
            "token_type": "Bearer",
            "expires_in": lifetime,
        }
        if scope:
            token["scope"] = scope
        if include_refresh_token and user is not None:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Record the grant (user, scope) and the refresh token, if there is a user."""
        user: GrantUser | None = request.user
        if user is None:
            return  # client credentials: the JWT is the whole state
        party = request.client.party
        refresh = token.get("refresh_token")
        ttl = self.refresh_seconds(party) if refresh else self.access_seconds(party)
        record = {
            "client_id": request.client.client_id,
            "party_id": party.id,
            "scope": user.grant_scope or token.get("scope", ""),
            "refresh": digest(refresh) if refresh else None,
            **user.record_fields(),
        }
        self.store.put(GRANT_KIND, user.grant_id, record, ttl)
        if refresh:
            self.store.put(
                REFRESH_KIND,
                digest(refresh),
                {"grant_id": user.grant_id, "client_id": request.client.client_id},
                ttl,
            )

    def id_token(
        self,
        *,
        client: OidcClient,
        user: GrantUser,
        scope: str,
        nonce: str | None,
        access_token: str | None,
    ) -> str:
        """An ID token for the client: ES256 unless the client asked for RS256."""
        party = client.party
        alg = party.id_token_signed_response_alg or self.settings.id_token_signing_alg
        now = int(self.clock())
        lifetime = party.id_token_seconds or self.settings.id_token_seconds
        claims: dict[str, Any] = {}
        claims.update(self.released_claims(party, user.identity, scope))
        claims.update(
            {
                "iss": self.issuer,
                "sub": user.subject,
                "aud": client.client_id,
                "azp": client.client_id,
                "iat": now,
                "exp": now + lifetime,
            }
        )
        if user.auth_time:
            claims["auth_time"] = user.auth_time
        if nonce:
            claims["nonce"] = nonce
        if user.acr:
            claims["acr"] = user.acr
        if user.amr:
            claims["amr"] = list(user.amr)
        if user.sid:
            claims["sid"] = user.sid
        if access_token:
            claims["at_hash"] = half_hash(access_token, alg)
        return self.signer.sign(claims, alg)

    def released_claims(
        self, party: OidcRelyingParty, identity_record: dict[str, Any], scope: str
    ) -> dict[str, Any]:
        """The party's release rules applied to the identity, gated by scope (no `sub`)."""
        identity = Identity.from_record(identity_record)
        try:
            result = release(identity, party.release, party.subject)
        except AccessDenied:
            return {}
        claims = result.claims(scope.split())
        for reserved in ("iss", "sub", "aud", "azp", "exp", "iat", "nonce", "auth_time"):
            claims.pop(reserved, None)
        return claims

    def exchange_token(
        self, client: OidcClient, subject: VerifiedToken, audience: str, scope: str | None
    ) -> dict[str, Any]:
        """RFC 8693: a token for another audience that never outlives the subject token."""
        now = int(self.clock())
        exp = min(now + self.access_seconds(client.party), int(subject.claims["exp"]))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject.claims["sub"],
            "aud": audience,
            "client_id": client.client_id,
            "iat": now,
            "exp": exp,
            "jti": new_jti(),
            "act": {"sub": client.client_id},
        }
        if scope:
            claims["scope"] = scope
        for inherited in ("gid", "auth_time"):
            if inherited in subject.claims:
                claims[inherited] = subject.claims[inherited]
        token = {
            "access_token": self.signer.sign(
                claims, self.settings.access_token_signing_alg, typ=ACCESS_TOKEN_TYPE
            ),
            "issued_token_type": grants.ACCESS_TOKEN_TYPE_URI,
            "token_type": "Bearer",
            "expires_in": max(exp - now, 0),
        }
        if scope:
            token["scope"] = scope
        return token

    # -- checking and revoking -----------------------------------------------------------------

    def active_access_token(self, token: str) -> VerifiedToken:
        """Verify one of our access tokens and check it was not revoked (TokenInvalid if not)."""
        verified = self.signer.verify(token, typ=ACCESS_TOKEN_TYPE)
        claims = verified.claims
        jti = claims.get("jti")
        if not isinstance(jti, str) or self.store.get(REVOKED_KIND, jti) is not None:
            raise TokenInvalid("revoked")
        grant_id = claims.get("gid")
        if grant_id is not None and self.grant(grant_id) is None:
            raise TokenInvalid("grant revoked")
        return verified

    def grant(self, grant_id: Any) -> dict[str, Any] | None:
        """The live grant record, or None if it ended or was revoked."""
        if not isinstance(grant_id, str) or len(grant_id) > 64:
            return None
        return self.store.get(GRANT_KIND, grant_id)

    def find_token(self, token: Any, hint: str | None) -> IntrospectedToken | None:
        """An active access token (JWT) or refresh token, for introspection and revocation."""
        if not isinstance(token, str) or not token or len(token) > 16 * 1024:
            return None
        if hint != "refresh_token" and token.count(".") == 2:
            try:
                verified = self.active_access_token(token)
            except TokenInvalid:
                verified = None
            if verified is not None:
                claims = verified.claims
                return IntrospectedToken(
                    "access_token", str(claims.get("client_id")), claims, claims["jti"],
                    float(claims["exp"]),
                )
        if len(token) > 256:
            return None
        key = digest(token)
        record = self.store.get(REFRESH_KIND, key)
        if record is None:
            return None
        grant = self.grant(record["grant_id"])
        if grant is None:
            return None
        claims = {"scope": grant["scope"], "sub": grant["subject"]}
        expires = self.clock() + self.refresh_seconds_for(record["client_id"])
        return IntrospectedToken("refresh_token", record["client_id"], claims, key, expires)

    def revoke(self, token: IntrospectedToken) -> None:
        """Revoke an access token until it expires, or a refresh token with its grant."""
        if token.kind == "access_token":
            ttl = max(token.expires_at - self.clock(), 1)
            self.store.put(REVOKED_KIND, token.key, {}, ttl)
            return
        record = self.store.get(REFRESH_KIND, token.key)
        if record is not None:
            self.revoke_grant(record["grant_id"], reason="refresh token revoked")

    def revoke_grant(self, grant_id: str, *, reason: str) -> None:
        """End a grant: its refresh token stops working and its access tokens turn inactive."""
        record = self.store.take(GRANT_KIND, grant_id)
        if record is not None and record.get("refresh"):
            self.store.delete(REFRESH_KIND, record["refresh"])
        log.warning("grant revoked", extra={"reason": reason, "client_id": (record or {}).get(
            "client_id")})

    def refreshed_user(self, grant: dict[str, Any], client: OidcClient) -> GrantUser | None:
        """The grant's user now: re-read from a RefreshableSource, and still released to."""
        identity = Identity.from_record(grant["identity"])
        source = self.sources.get(identity.source)
        if isinstance(source, RefreshableSource):
            current = source.refresh(identity)
            if current is None:
                return None
            if current.authentication is None and identity.authentication is not None:
                current = current.with_authentication(identity.authentication)
            identity = current
        try:
            result = release(identity, client.party.release, client.party.subject)
        except AccessDenied:
            return None
        if result.subject != grant["subject"]:
            return None
        return GrantUser.from_record(grant, identity=identity.to_record())

    # -- discovery -----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """OpenID Provider / RFC 8414 metadata."""
        data: dict[str, Any] = {"issuer": self.issuer}
        data.update({name: self.url(name) for name in ENDPOINT_PATHS})
        data.update(
            {
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "client_credentials",
                    grants.TOKEN_EXCHANGE,
                ],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                "scopes_supported": ["openid", "profile", "email", "groups", "offline_access"],
                "claims_supported": [
                    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr",
                    "azp", "at_hash", "sid", "name", "given_name", "family_name",
                    "preferred_username", "email", "groups",
                ],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic", "client_secret_post", "private_key_jwt", "none",
                ],
                "token_endpoint_auth_signing_alg_values_supported": list(
                    grants.PrivateKeyJwt.ALGORITHMS
                ),
                "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
                "revocation_endpoint_auth_methods_supported": [*CLIENT_AUTH_METHODS, "none"],
                "code_challenge_methods_supported": ["S256"],
                "prompt_values_supported": ["none", "login"],
                "claims_parameter_supported": False,
                "request_parameter_supported": False,
                "request_uri_parameter_supported": False,
                "require_request_uri_registration": True,
                "authorization_response_iss_parameter_supported": True,
                "userinfo_signing_alg_values_supported": [],
                "frontchannel_logout_supported": False,
                "backchannel_logout_supported": False,
            }
        )
        return data
