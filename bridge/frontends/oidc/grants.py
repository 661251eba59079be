"""Authlib's grants with their persistence hooks bound to the bridge's store.

Codes and refresh tokens are TTL records stored under the SHA-256 of their value and consumed
with `store.take`, so each is redeemed at most once across every worker and node. A consumed
code or refresh token leaves a marker behind: presenting it again revokes the whole grant
(RFC 6749 section 4.1.2, RFC 9700 section 4.14).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    grants,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from bridge.frontends.oidc.settings import TOKEN_EXCHANGE
from bridge.frontends.oidc.tokens import TokenInvalid, digest

if TYPE_CHECKING:
    from bridge.frontends.oidc.clients import OidcClient
    from bridge.frontends.oidc.server import OidcProvider

CODE_KIND = "oidc-code"
CODE_USED_KIND = "oidc-code-used"
GRANT_KIND = "oidc-grant"
REFRESH_KIND = "oidc-refresh"
REFRESH_USED_KIND = "oidc-refresh-used"
ASSERTION_JTI_KIND = "oidc-assertion-jti"
# Where a consumed one-time value leaves its marker.
USED_KIND = {CODE_KIND: CODE_USED_KIND, REFRESH_KIND: REFRESH_USED_KIND}
ACCESS_TOKEN_TYPE_URI = "urn:ietf:params:oauth:token-type:access_token"
USER_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


def provider_of(grant: Any) -> OidcProvider:
    """The OidcProvider behind an Authlib grant or endpoint."""
    return grant.server.provider


@dataclass
class GrantUser:
    """The signed-in user behind a code or refresh token, with the grant it belongs to."""

    identity: dict[str, Any]
    subject: str
    grant_id: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    auth_time: int | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    sid: str | None = None
    nonce: str | None = None
    grant_scope: str = ""

    def get_user_id(self) -> str:
        """The `sub` of tokens about this user."""
        return self.subject

    @classmethod
    def from_record(
        cls, record: dict[str, Any], identity: dict[str, Any] | None = None
    ) -> GrantUser:
        """The user kept in a code or grant record (with a fresher identity, if given)."""
        return cls(
            identity=record["identity"] if identity is None else identity,
            subject=record["subject"],
            grant_id=record["grant_id"],
            auth_time=record.get("auth_time"),
            acr=record.get("acr"),
            amr=tuple(record.get("amr") or ()),
            sid=record.get("sid"),
            nonce=record.get("nonce"),
            grant_scope=record["scope"],
        )

    def record_fields(self) -> dict[str, Any]:
        """What code and grant records keep about the user and the sign-in."""
        return {
            "identity": self.identity,
            "subject": self.subject,
            "grant_id": self.grant_id,
            "auth_time": self.auth_time,
            "acr": self.acr,
            "amr": list(self.amr),
            "sid": self.sid,
        }


def take_once(
    provider: OidcProvider,
    kind: str,
    value: Any,
    *,
    reused: str,
    marker_seconds: Callable[[dict[str, Any]], float],
) -> dict[str, Any] | None:
    """Take a one-time code or refresh token; presenting a taken one again revokes its grant.

    The record is consumed atomically (one winner across every worker and node) and leaves a
    marker under the same digest for `marker_seconds(record)`, which is what recognises a
    second presentation (RFC 6749 section 4.1.2, RFC 9700 section 4.14).
    Returns the record, or None.
    """
    if not isinstance(value, str) or not value or len(value) > 256:
        return None
    key = digest(value)
    used_kind = USED_KIND[kind]
    record = provider.store.take(kind, key)
    if record is None:
        used = provider.store.get(used_kind, key)
        if used is not None:
            provider.revoke_grant(used["grant_id"], reason=reused)
        return None
    provider.store.put(used_kind, key, {"grant_id": record["grant_id"]}, marker_seconds(record))
    return record


@dataclass
class StoredCode:
    """An authorization code taken from the store (it no longer exists there)."""

    record: dict[str, Any]

    def get_redirect_uri(self) -> str:
        """The redirect_uri the code was issued for."""
        return self.record["redirect_uri"]

    def get_scope(self) -> str:
        """The granted scope."""
        return self.record["scope"]

    def get_nonce(self) -> str | None:
        """The nonce of the authorization request."""
        return self.record.get("nonce")

    def get_auth_time(self) -> int | None:
        """When the user signed in."""
        return self.record.get("auth_time")

    def get_acr(self) -> str | None:
        """Authentication context class."""
        return self.record.get("acr")

    def get_amr(self) -> list[str] | None:
        """Authentication methods."""
        return self.record.get("amr") or None

    @property
    def code_challenge(self) -> str | None:
        """PKCE challenge bound to the code."""
        return self.record.get("code_challenge")

    @property
    def code_challenge_method(self) -> str | None:
        """PKCE method (always S256 when present)."""
        return self.record.get("code_challenge_method")


@dataclass
class StoredRefreshToken:
    """A refresh token taken from the store, with its grant."""

    record: dict[str, Any]
    grant: dict[str, Any]

    def check_client(self, client: OidcClient) -> bool:
        """Bound to the client it was issued to."""
        return self.record["client_id"] == client.get_client_id()

    def get_scope(self) -> str:
        """The scope of the whole grant (a refresh never widens it)."""
        return self.grant["scope"]


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    """Code flow; codes are single-use store records bound to client, redirect_uri and PKCE."""

    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    AUTHORIZATION_CODE_LENGTH = 43  # ~256 bits of token_urlsafe alphabet

    def save_authorization_code(self, code: str, request: Any) -> None:
        """Store the code with everything the token request will need."""
        provider = provider_of(self)
        user: GrantUser = request.user
        data = request.payload.data
        record = {
            "client_id": request.client.get_client_id(),
            "redirect_uri": request.payload.redirect_uri,
            "scope": request.scope or "",
            "nonce": data.get("nonce"),
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
            **user.record_fields(),
        }
        provider.store.put(CODE_KIND, digest(code), record, provider.settings.code_seconds)

    def query_authorization_code(self, code: str, client: OidcClient) -> StoredCode | None:
        """Take the code atomically; a second presentation revokes what the first one got."""
        provider = provider_of(self)
        record = take_once(
            provider, CODE_KIND, code, reused="authorization code reused",
            marker_seconds=lambda _record: provider.used_marker_seconds,
        )
        if record is None or record["client_id"] != client.get_client_id():
            return None
        return StoredCode(record)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Nothing to do: query_authorization_code already took it."""

    def authenticate_user(self, authorization_code: StoredCode) -> GrantUser | None:
        """The user the code was issued for."""
        return GrantUser.from_record(authorization_code.record)

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: OidcClient) -> str:
        """The redirect_uri must be given and registered; the error never echoes it."""
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri:
            raise InvalidRequestError("Missing 'redirect_uri' in request.")
        if not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError("The redirect_uri is not registered for this client.")
        return redirect_uri

    def validate_token_request(self) -> None:
        """As Authlib, plus: a redirect_uri is required whenever the code was bound to one."""
        super().validate_token_request()
        code: StoredCode = self.request.authorization_code
        if self.request.payload.redirect_uri != code.get_redirect_uri():
            raise InvalidGrantError("Invalid 'redirect_uri' in request.")


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only; required for public clients; no verifier without a challenge."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        """Refuse `plain` and a missing method; public clients must send a challenge."""
        data = grant.request.payload.data
        challenge = data.get("code_challenge")
        method = data.get("code_challenge_method")
        if grant.request.client.is_public and not challenge:
            raise InvalidRequestError("Public clients must use PKCE with S256.")
        if challenge and method != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        """A missing or wrong verifier for a code bound to a challenge is invalid_grant."""
        code: StoredCode = grant.request.authorization_code
        if code.code_challenge and not grant.request.form.get("code_verifier"):
            raise InvalidGrantError("The code_verifier is missing.")
        super().validate_code_verifier(grant, result)


class OpenIDCodeExtension(OpenIDCode):
    """Adds the ID token to code-flow token responses, signed per client (ES256 by default)."""

    def __init__(self, provider: OidcProvider):
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        """Nonces are the client's replay defence; ours is the single-use code."""
        return False

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        """Build and sign the ID token from the code's record and the release rules."""
        provider = self.provider
        code: StoredCode = request.authorization_code
        return provider.id_token(
            client=request.client,
            user=request.user,
            scope=token["scope"],
            nonce=code.get_nonce(),
            access_token=token.get("access_token"),
        )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """Rotating refresh tokens; reuse of a rotated one revokes the whole grant."""

    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefreshToken | None:
        """Take the refresh token atomically; a rotated one coming back revokes its grant."""
        provider = provider_of(self)
        record = take_once(
            provider, REFRESH_KIND, refresh_token, reused="refresh token reused",
            marker_seconds=lambda taken: provider.refresh_seconds_for(taken["client_id"]),
        )
        if record is None:
            return None
        grant = provider.store.get(GRANT_KIND, record["grant_id"])
        if grant is None:
            return None
        return StoredRefreshToken(record, grant)

    def authenticate_user(self, refresh_token: StoredRefreshToken) -> GrantUser | None:
        """The grant's user, re-read from its source when the source can do that."""
        provider = provider_of(self)
        return provider.refreshed_user(refresh_token.grant, self.request.client)

    def create_token_response(self) -> Any:
        """As Authlib, but a user who may no longer sign in gets invalid_grant."""
        refresh_token = self.request.refresh_token
        if self.authenticate_user(refresh_token) is None:
            provider_of(self).revoke_grant(refresh_token.grant["grant_id"], reason="user gone")
            raise InvalidGrantError("The user can no longer sign in.")
        return super().create_token_response()

    def revoke_old_credential(self, refresh_token: StoredRefreshToken) -> None:
        """Nothing to do: authenticate_refresh_token already took it."""


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """Machine-to-machine tokens; scopes must be among the client's."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        """As Authlib, plus: every requested scope must be registered for the client."""
        super().validate_token_request()
        requested = (self.request.payload.scope or "").split()
        if set(requested) - set(self.request.client.party.scopes):
            raise InvalidScopeError()
        if {"openid", "offline_access"} & set(requested):
            raise InvalidScopeError("openid and offline_access need a user.")


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    """RFC 8693: trade a bridge access token for a narrower one for another audience."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        """Check the client, the subject token, the audience and the scope."""
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client may not exchange tokens.")
        form = self.request.form
        for name in ("subject_token", "subject_token_type", "audience", "scope", "resource"):
            if len(self.request.payload.datalist.get(name, [])) > 1:
                raise InvalidRequestError(f"Repeated '{name}' parameter.")
        if form.get("actor_token") or form.get("actor_token_type"):
            raise InvalidRequestError("actor_token is not supported.")
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE_URI:
            raise InvalidRequestError("subject_token_type must be an access token.")
        requested_type = form.get("requested_token_type")
        if requested_type not in (None, ACCESS_TOKEN_TYPE_URI):
            raise InvalidRequestError("Only access tokens can be requested.")
        audience = form.get("audience")
        if not audience:
            raise InvalidRequestError("Missing 'audience'.")
        if audience not in client.party.token_exchange_audiences:
            raise InvalidGrantError("The client may not obtain tokens for this audience.")
        provider = provider_of(self)
        try:
            subject = provider.active_access_token(form.get("subject_token", ""))
        except TokenInvalid as exc:
            raise InvalidGrantError("The subject token is not active.") from exc
        claims = subject.claims
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if client.access_token_audience not in audiences and claims.get(
            "client_id"
        ) != client.get_client_id():
            raise InvalidGrantError("The subject token was not issued for this client.")
        original = set(str(claims.get("scope", "")).split())
        requested = (self.request.payload.scope or "").split()
        if set(requested) - original:
            raise InvalidScopeError()
        self.request.client = client
        self.request.subject_token = subject
        self.request.exchange_scope = " ".join(requested) if requested else claims.get("scope")
        self.request.exchange_audience = audience

    @hooked
    def create_token_response(self) -> Any:
        """Issue the narrower token; it never outlives the subject token."""
        provider = provider_of(self)
        token = provider.exchange_token(
            self.request.client,
            self.request.subject_token,
            self.request.exchange_audience,
            self.request.exchange_scope,
        )
        return 200, token, self.TOKEN_RESPONSE_HEADER


class PrivateKeyJwt(JWTBearerClientAssertion):
    """private_key_jwt: iss = sub = client_id, our audience, exp, and a jti used only once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    ALGORITHMS = ("ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")

    def __init__(self, provider: OidcProvider):
        super().__init__(validate_jti=True, leeway=provider.settings.clock_skew_seconds)
        self.provider = provider

    def get_audiences(self) -> list[str]:
        """The issuer and each endpoint a client assertion may be sent to."""
        return self.provider.assertion_audiences()

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        """Verify with the client's keys and an allow-list of asymmetric algorithms."""
        from authlib.oauth2.rfc6749 import InvalidClientError
        from joserfc import jwt

        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(self.ALGORITHMS))
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="Invalid client assertion.") from exc
        if not isinstance(token.claims.get("exp"), int | float):
            raise InvalidClientError(description="Invalid client assertion.")
        self.verify_claims(token.claims)
        return token.claims

    def resolve_client_public_key(self, client: OidcClient) -> KeySet:
        """The client's registered keys (inline jwks, or jwks_uri fetched and cached)."""
        from authlib.oauth2.rfc6749 import InvalidClientError

        party = client.party
        try:
            data = party.jwks or self.provider.jwks_fetcher.get(party.jwks_uri or "")
            public = {"keys": [k for k in data["keys"] if isinstance(k, dict) and "d" not in k]}
            return KeySet.import_key_set(public)
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise InvalidClientError(description="The client's keys are unusable.") from exc

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        """Remember each assertion's jti until it expires, in the shared store."""
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            return False
        ttl = max(float(claims["exp"]) - self.provider.clock(), 0) + self.leeway + 1
        key = digest(f"{claims['sub']}\x00{jti}")
        return self.provider.store.add(ASSERTION_JTI_KIND, key, {}, ttl)
