"""HTTP surface of the OpenID provider: discovery, JWKS, authorize, token, userinfo,
introspection, revocation and RP-initiated logout.

JSON endpoints answer every failure with an RFC 6749 / RFC 6750 JSON error, never a 500 page.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc6750.errors import InsufficientScopeError, InvalidTokenError
from flask import Blueprint, Response, current_app, g, make_response, render_template, request
from werkzeug.exceptions import HTTPException

from bridge.frontends.oidc.frontend import OidcFrontend, session_sid
from bridge.frontends.oidc.server import OidcProvider
from bridge.frontends.oidc.tokens import TokenInvalid
from bridge.services import services
from bridge.store import StoreUnavailable

log = logging.getLogger("bridge.oidc")
PROVIDER_KEY = "bridge-oidc"
bp = Blueprint("oidc", __name__)
JSON_VIEWS = frozenset(
    {"oidc.token", "oidc.userinfo", "oidc.introspect", "oidc.revoke", "oidc.jwks",
     "oidc.discovery", "oidc.oauth_metadata"}
)
DISCOVERY_CACHE = "public, max-age=300"


def provider() -> OidcProvider:
    """The app's OIDC provider."""
    return current_app.extensions[PROVIDER_KEY]


def frontend() -> OidcFrontend:
    """The app's OIDC frontend."""
    return current_app.extensions[PROVIDER_KEY + "-frontend"]


def _json(body: Any, status: int = 200, cache: str = "no-store", **headers: str) -> Response:
    response = Response(json.dumps(body, separators=(",", ":")), status=status,
                        mimetype="application/json")
    response.headers["Cache-Control"] = cache
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _oauth_error(error: str, description: str, status: int) -> Response:
    body = {"error": error, "error_description": description}
    response = _json(body, status)
    response.headers["Pragma"] = "no-cache"
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    # 405, 413 and friends on the JSON endpoints are protocol errors, not HTML pages.
    if request.endpoint not in JSON_VIEWS:
        raise exc
    status = exc.code or 400
    return _oauth_error("invalid_request", exc.name or "Bad request", status)


@bp.errorhandler(StoreUnavailable)
def _store_down(exc: StoreUnavailable) -> Response:
    log.error("store unavailable", extra={"error": str(exc)})
    if request.endpoint not in JSON_VIEWS:
        raise exc
    return _oauth_error("temporarily_unavailable", "Please try again shortly.", 503)


# -- discovery --------------------------------------------------------------------------------


@bp.get("/.well-known/openid-configuration")
# msal's oidc_authority needs a path segment: `oidc_authority="https://HOST/oauth2"` reads this.
@bp.get("/oauth2/.well-known/openid-configuration")
def discovery() -> Response:
    """OpenID Provider metadata."""
    return _json(provider().metadata(), cache=DISCOVERY_CACHE)


@bp.get("/.well-known/oauth-authorization-server")
def oauth_metadata() -> Response:
    """RFC 8414 authorization server metadata (the same document)."""
    return _json(provider().metadata(), cache=DISCOVERY_CACHE)


@bp.get("/oauth2/jwks")
def jwks() -> Response:
    """Public keys: current, next, and retired ones still inside their publication window."""
    return _json(provider().signer.jwks(), cache=DISCOVERY_CACHE)


# -- authorization ----------------------------------------------------------------------------


@bp.route("/oauth2/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """The authorization endpoint (code flow with PKCE)."""
    from bridge.web.auth import current_session

    return frontend().authorize(current_session(), services().login_flow)


# -- token, introspection, revocation ---------------------------------------------------------


def _guard_form() -> Response | None:
    if request.method != "POST":
        response = _oauth_error("invalid_request", "Use POST.", 405)
        response.headers["Allow"] = "POST"
        return response
    if request.mimetype != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request", "Use application/x-www-form-urlencoded.", 400)
    for name, values in request.form.lists():
        if len(values) > 1 and name != "resource":
            return _oauth_error("invalid_request", "A parameter is repeated.", 400)
    return None


@bp.route("/oauth2/token", methods=["GET", "POST"])
def token() -> Response:
    """The token endpoint: authorization_code, refresh_token, client_credentials, exchange."""
    return _guard_form() or provider().server.create_token_response()


@bp.route("/oauth2/introspect", methods=["GET", "POST"])
def introspect() -> Response:
    """RFC 7662 token introspection (client authentication required)."""
    response = _guard_form() or provider().server.create_endpoint_response("introspection")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/oauth2/revoke", methods=["GET", "POST"])
def revoke() -> Response:
    """RFC 7009 token revocation (only by the client the token was issued to)."""
    return _guard_form() or provider().server.create_endpoint_response("revocation")


# -- userinfo ---------------------------------------------------------------------------------


class AccessTokenValidator(BearerTokenValidator):
    """Accepts only the bridge's own, unrevoked RFC 9068 access tokens."""

    def authenticate_token(self, token_string: str) -> dict[str, Any] | None:
        """Verify the JWT; None if it is not an active access token of ours."""
        try:
            return provider().active_access_token(token_string).claims
        except TokenInvalid:
            return None

    def validate_token(self, token: Any, scopes: Any, request: Any) -> None:
        """Raise the RFC 6750 error for a missing token or one without the scope."""
        if not token:
            raise InvalidTokenError(realm=self.realm)
        if self.scope_insufficient(str(token.get("scope", "")).split(), scopes):
            raise InsufficientScopeError()


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        kind, _, value = header.partition(" ")
        return value.strip() if kind.lower() == "bearer" and value.strip() else None
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        return request.form.get("access_token") or None
    return None


def _bearer_error(error: OAuth2Error) -> Response:
    status, body, headers = error()
    response = _json(dict(body), status)
    for name, value in headers:
        if name.lower() == "www-authenticate":
            response.headers["WWW-Authenticate"] = value
    return response


@bp.route("/oauth2/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """Claims about the user, released by the relying party's rules and gated by scope."""
    validator = AccessTokenValidator(realm="bridge")
    token_string = _bearer_token()
    if token_string is None:
        response = _json({"error": "invalid_request"}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="bridge"'
        return response
    claims = validator.authenticate_token(token_string)
    try:
        validator.validate_token(claims, ["openid"], None)
    except OAuth2Error as error:
        return _bearer_error(error)
    oidc = provider()
    grant = oidc.grant(claims.get("gid"))
    party = oidc.clients.party(claims.get("client_id"))
    if grant is None or party is None:
        return _bearer_error(InvalidTokenError(realm="bridge"))
    body = oidc.released_claims(party, grant["identity"], str(claims.get("scope", "")))
    body["sub"] = grant["subject"]
    return _json(body)


# -- RP-initiated logout ----------------------------------------------------------------------


@bp.route("/oauth2/logout", methods=["GET", "POST"])
def end_session() -> Response:
    """RP-initiated logout: end the session named by id_token_hint, then go back exactly."""
    from flask import redirect

    from bridge.web.auth import current_session

    oidc = provider()
    values = request.values
    hint = values.get("id_token_hint")
    target = values.get("post_logout_redirect_uri")
    state = values.get("state")
    client_id = values.get("client_id")
    claims: dict[str, Any] = {}
    if hint:
        try:
            claims = oidc.signer.verify(hint, check_expiry=False).claims
        except TokenInvalid:
            return frontend().error_page("The id_token_hint is not valid.")
        audience = claims.get("aud")
        hinted_client = audience[0] if isinstance(audience, list) and audience else audience
        if client_id and client_id != hinted_client:
            return frontend().error_page("The client_id does not match the id_token_hint.")
        client_id = hinted_client
    client = oidc.clients.client(client_id) if client_id else None
    if target and (client is None or not client.check_post_logout_redirect_uri(target)):
        return frontend().error_page("The post_logout_redirect_uri is not registered.")
    session = current_session()
    if not hint:
        # Without proof of which session the client means, the user must confirm.
        return make_response(
            render_template(
                "logout.html", session=session, csrf_token=services().csrf.token()
            )
        )
    ended = session is not None and claims.get("sid") == session_sid(session.id)
    if ended and session is not None:
        services().login_flow.end_session(session, target or "/logout/done")
        services().audit.record(
            "sign-out", "success", username=session.identity.username,
            subject=session.identity.subject, source=session.identity.source,
            client_ip=request.remote_addr, request_id=g.get("request_id"),
            relying_party=client.party.id if client else None,
        )
        g.sso_session = None
    if target:
        from authlib.common.urls import add_params_to_uri

        location = add_params_to_uri(target, [("state", state)] if state else [])
        response = redirect(location, 302)
    else:
        response = make_response(render_template("logged_out.html"))
    if ended:
        config = services().config
        response.delete_cookie(
            config.session.cookie_name, path="/", secure=config.server.secure_cookies,
            httponly=True, samesite="Lax",
        )
    return response


def init_app(app: Any) -> None:
    """Build the provider from the app's services, register the frontend and the blueprint."""
    from bridge.services import EXTENSION_KEY

    bridge = app.extensions[EXTENSION_KEY]
    oidc = OidcProvider(
        bridge.config.oidc,
        bridge.config.server.public_url,
        bridge.store,
        bridge.keys,
        bridge.relying_parties,
        bridge.sources,
    )
    oidc_frontend = OidcFrontend(oidc)
    app.extensions[PROVIDER_KEY] = oidc
    app.extensions[PROVIDER_KEY + "-frontend"] = oidc_frontend
    bridge.login_flow.register(oidc_frontend)
    app.register_blueprint(bp)
