"""The OIDC frontend of the login flow: authorization requests in, codes out.

The authorize endpoint validates the request with Authlib (client, exact redirect_uri, response
type, scope, PKCE), turns it into a `LoginRequest` and hands it to the login flow. When the
user has a usable session, `complete` issues the code; `fail` answers `login_required`.
Errors before the client and redirect_uri are validated are shown as a page, never redirected
(RFC 6749 section 4.1.2.1); after that they go to the validated URI with `state` and `iss`.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from authlib.oidc.core.errors import (
    LoginRequiredError,
    RequestNotSupportedError,
    RequestURINotSupportedError,
)
from flask import Response, make_response, render_template

from bridge.frontends.oidc.grants import GrantUser
from bridge.frontends.oidc.server import OidcProvider, StoredAuthorizationRequest
from bridge.frontends.oidc.tokens import TokenInvalid
from bridge.login_flow import LoginError, LoginRequest
from bridge.mapping import AccessDenied, release
from bridge.sessions import SsoSession

log = logging.getLogger("bridge.oidc")
PROTOCOL = "oidc"
# The parameters a pending request keeps; everything else is not needed after validation.
KEPT_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)
MAX_LENGTHS = {"state": 2048, "nonce": 512, "login_hint": 256, "id_token_hint": 16384}


class AccessDeniedError(OAuth2Error):
    """RFC 6749 access_denied."""

    error = "access_denied"


class OidcFrontend:
    """Turns authorization requests into login requests and signed-in sessions into codes."""

    protocol = PROTOCOL

    def __init__(self, provider: OidcProvider):
        self.provider = provider

    # -- the authorize endpoint ----------------------------------------------------------------

    def authorize(self, session: SsoSession | None, login_flow: Any) -> Response:
        """Validate an authorization request (GET or POST) and start the login flow."""
        server = self.provider.server
        oauth_request = server.create_oauth2_request(None)
        data = oauth_request.payload.data
        state = data.get("state")
        try:
            for name, limit in MAX_LENGTHS.items():
                value = data.get(name)
                if value is not None and len(value) > limit:
                    raise InvalidRequestError(f"The '{name}' parameter is too long.")
            grant = server.get_authorization_grant(oauth_request)
            grant.validate_no_multiple_request_parameter(oauth_request)
            redirect_uri = grant.validate_authorization_request()
        except OAuth2Error as error:
            error.state = state
            return self.error_response(error)
        except ValueError:
            # Authlib refuses to build an error description from hostile input: render ours.
            return self.error_page("The authorization request is malformed.")
        client = oauth_request.client
        party = client.party

        def redirect_error(error: OAuth2Error) -> Response:
            error.redirect_uri = redirect_uri
            error.state = state
            return self.error_response(error)

        if data.get("request"):
            return redirect_error(RequestNotSupportedError())
        if data.get("request_uri"):
            return redirect_error(RequestURINotSupportedError())
        if data.get("response_mode") not in (None, "query"):
            return redirect_error(InvalidRequestError("Only response_mode=query is supported."))
        prompts = (data.get("prompt") or "").split()
        if "none" in prompts and len(prompts) > 1:
            return redirect_error(InvalidRequestError("prompt=none cannot be combined."))
        max_age = data.get("max_age")
        if max_age is not None:
            if not max_age.isdigit() or len(max_age) > 10:
                return redirect_error(InvalidRequestError("max_age must be a whole number."))
            max_age = int(max_age)
        passive = "none" in prompts
        force = "login" in prompts or "select_account" in prompts or max_age == 0
        hint = data.get("id_token_hint")
        if hint:
            try:
                hinted = self.provider.signer.verify(hint, check_expiry=False)
            except TokenInvalid:
                return redirect_error(InvalidRequestError("The id_token_hint is not valid."))
            if session is not None and self._subject(party, session) != hinted.claims.get("sub"):
                if passive:
                    return redirect_error(LoginRequiredError())
                force = True
        params = {name: data[name] for name in KEPT_PARAMS if data.get(name)}
        params["scope"] = oauth_request.scope or ""
        if data.get("code_challenge") and not data.get("code_challenge_method"):
            params["code_challenge_method"] = "S256"
        login_request = LoginRequest(
            protocol=PROTOCOL,
            relying_party=party.id,
            params=params,
            force_authn=force,
            passive=passive,
            max_age=max_age,
            sources=party.sources,
            login_hint=data.get("login_hint") or None,
        )
        return login_flow.start(login_request, session)

    # -- the login flow's Frontend protocol ----------------------------------------------------

    def complete(self, login_request: LoginRequest, session: SsoSession) -> Response:
        """Issue the code for the signed-in session and send the browser back to the client."""
        from bridge.services import services

        server = self.provider.server
        stored = self._stored(login_request)
        state = stored.payload.state
        try:
            grant = server.get_authorization_grant(stored)
            redirect_uri = grant.validate_authorization_request()
        except OAuth2Error as error:
            error.state = state
            return self.error_response(error)
        party = stored.client.party
        identity = session.identity
        try:
            subject = release(identity, party.release, party.subject).subject
        except AccessDenied as denied:
            log.info("access denied by release rules", extra={"relying_party": party.id})
            services().audit.record(
                "oidc-authorize", "denied", username=identity.username,
                subject=identity.subject, source=identity.source, relying_party=party.id,
                reason=denied.reason,
            )
            return self.error_response(
                AccessDeniedError(redirect_uri=redirect_uri, state=state)
            )
        auth = identity.authentication
        user = GrantUser(
            identity=identity.to_record(),
            subject=subject,
            auth_time=int(session.auth_time),
            acr=auth.context_class if auth else None,
            amr=tuple(auth.amr) if auth else (),
            sid=session_sid(session.id),
            nonce=stored.payload.data.get("nonce"),
            grant_scope=stored.scope or "",
        )
        try:
            status, body, headers = grant.create_authorization_response(redirect_uri, user)
        except OAuth2Error as error:
            error.state = state
            return self.error_response(error)
        services().sessions.add_participant(session, party.id)
        location = dict(headers)["Location"]
        return self._redirect(location)

    def fail(self, login_request: LoginRequest, error: LoginError) -> Response:
        """prompt=none without a usable session: login_required at the validated redirect_uri."""
        params = login_request.params
        return self.error_response(
            LoginRequiredError(redirect_uri=params["redirect_uri"], state=params.get("state"))
        )

    # -- helpers -------------------------------------------------------------------------------

    def error_response(self, error: OAuth2Error) -> Response:
        """Redirect to a validated redirect_uri with `iss`, or render the error as a page."""
        if error.redirect_uri:
            status, _, headers = error()
            return self._redirect(dict(headers)["Location"])
        description = error.description or error.error
        return self.error_page(f"{description} ({error.error})")

    def error_page(self, message: str) -> Response:
        """An error shown to the user at the bridge, with no redirect anywhere."""
        page = render_template("error.html", message=message, status=400)
        return make_response(page, 400)

    def _redirect(self, location: str) -> Response:
        response = make_response("", 302)
        response.headers["Location"] = add_params_to_uri(location, [("iss", self.provider.issuer)])
        return response

    def _stored(self, login_request: LoginRequest) -> StoredAuthorizationRequest:
        return StoredAuthorizationRequest(self.provider.url("authorization_endpoint"),
                                          dict(login_request.params))

    def _subject(self, party: Any, session: SsoSession) -> str | None:
        try:
            return release(session.identity, party.release, party.subject).subject
        except AccessDenied:
            return None


def session_sid(session_id: str) -> str:
    """The `sid` claim: names the SSO session without revealing its cookie value."""
    return hashlib.sha256(f"oidc-sid\x00{session_id}".encode()).hexdigest()[:32]
