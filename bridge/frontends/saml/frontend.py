"""The SAML frontend: AuthnRequest in, signed Response out, and single logout across SPs.

Requests are verified completely (issuer, destination, signature, time, ACS, replay) before
anything is sent anywhere: until the ACS is known to be registered, every error is a page at
the bridge (S07). After that, errors the SP should hear about (NoPassive, RequestDenied,
NoAuthnContext, InvalidNameIDPolicy) go back to that ACS as a SAML status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, make_response, redirect, render_template, url_for
from lxml import etree

from bridge.frontends.saml import bindings
from bridge.frontends.saml.encryption import encrypt_assertion
from bridge.frontends.saml.model import (
    BINDING_POST,
    NAMEID_EMAIL,
    NAMEID_FORMATS,
    NAMEID_PERSISTENT,
    NAMEID_TRANSIENT,
    NAMEID_UNSPECIFIED,
    SamlEndpoint,
)
from bridge.frontends.saml.registration import RefreshTimer
from bridge.frontends.saml.requests import (
    AuthnRequest,
    MessageError,
    MessageHeader,
    check_relay_state,
)
from bridge.frontends.saml.responses import (
    STATUS_INVALID_NAMEID_POLICY,
    STATUS_NO_AUTHN_CONTEXT,
    STATUS_NO_PASSIVE,
    STATUS_REQUEST_DENIED,
    STATUS_RESPONDER,
    STATUS_SUCCESS,
    AssertionContent,
    NameId,
    build_assertion,
    build_logout_request,
    build_logout_response,
    build_response,
    serialize,
)
from bridge.frontends.saml.signing import Signer, signer_for
from bridge.identity import PASSWORD_PROTECTED_TRANSPORT
from bridge.login_flow import LoginError, LoginRequest
from bridge.mapping import AccessDenied, Release, release
from bridge.relying_parties import SamlRelyingParty
from bridge.services import services
from bridge.sessions import SsoSession

log = logging.getLogger("bridge.saml")

PROTOCOL = "saml"
PARTICIPANT_PREFIX = "saml:"
REPLAY_KIND = "saml-request-id"
PENDING_KIND = "saml-pending"
PARTICIPANT_KIND = "saml-participant"
LOGOUT_KIND = "saml-logout"
LOGOUT_CHAIN_SECONDS = 600
PASSWORD = "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"
UNSPECIFIED_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
# Strength order of the contexts the bridge can assert (password sources only, for now).
CONTEXT_RANK = {UNSPECIFIED_CONTEXT: 0, PASSWORD: 1, PASSWORD_PROTECTED_TRANSPORT: 2}


def idp_entity_id() -> str:
    """The bridge's entityID: configured, else <public_url>/saml/metadata."""
    config = services().config
    return config.saml.entity_id or config.server.public_url + "/saml/metadata"


def sso_url() -> str:
    """The SingleSignOnService location (both bindings)."""
    return services().config.server.public_url + "/saml/sso"


def slo_url() -> str:
    """The SingleLogoutService location (both bindings)."""
    return services().config.server.public_url + "/saml/slo"


def error_page(message: str, status: int = 400) -> Response:
    """A readable page at the bridge; nothing is sent to any service provider."""
    return make_response(render_template("error.html", message=message, status=status), status)


def find_service_provider(entity_id: str) -> SamlRelyingParty | None:
    """The enabled SAML relying party with this entityID."""
    for party in services().relying_parties.all():
        if isinstance(party, SamlRelyingParty) and party.entity_id == entity_id:
            return party if party.enabled else None
    return None


def service_provider(party_id: str) -> SamlRelyingParty | None:
    """The enabled SAML relying party with this id."""
    party = services().relying_parties.get(party_id)
    if isinstance(party, SamlRelyingParty) and party.enabled:
        return party
    return None


def default_acs(sp: SamlRelyingParty) -> SamlEndpoint | None:
    """The SP's default POST ACS: marked default, else lowest index, else first."""
    endpoints = [e for e in sp.acs if e.binding == "post"]
    if not endpoints:
        return None
    marked = [e for e in endpoints if e.default]
    if marked:
        return marked[0]
    indexed = sorted((e for e in endpoints if e.index is not None), key=lambda e: e.index or 0)
    return indexed[0] if indexed else endpoints[0]


def resolve_acs(sp: SamlRelyingParty, request: AuthnRequest) -> SamlEndpoint:
    """The registered ACS the request asks for (S07): exact URL or index, else the default."""
    if request.protocol_binding not in (None, BINDING_POST):
        raise MessageError("Responses are only sent with the HTTP-POST binding.")
    if request.acs_index is not None:
        for endpoint in sp.acs:
            if endpoint.index == request.acs_index and endpoint.binding == "post":
                return endpoint
        raise MessageError("The requested assertion consumer service is not registered.")
    if request.acs_url is not None:
        for endpoint in sp.acs:
            if endpoint.url == request.acs_url and endpoint.binding == "post":
                return endpoint
        raise MessageError("The requested assertion consumer service is not registered.")
    endpoint = default_acs(sp)
    if endpoint is None:
        raise MessageError("This application has no assertion consumer service registered.")
    return endpoint


def check_time(header: MessageHeader, now: float) -> None:
    """IssueInstant within the configured clock skew of now (S08)."""
    skew = services().config.saml.clock_skew_seconds
    if abs(header.issue_instant.timestamp() - now) > skew:
        raise MessageError("The request was issued too long ago or in the future.")


def remember_request_id(sp: SamlRelyingParty, message_id: str) -> None:
    """Refuse a request ID seen before from this SP (S08; the cache is the shared store)."""
    ttl = 2 * services().config.saml.clock_skew_seconds + 60
    digest = hashlib.sha256(message_id.encode()).hexdigest()
    if not services().store.add(REPLAY_KIND, f"{sp.id}:{digest}", {}, ttl):
        raise MessageError("This request has already been used.")


def context_satisfied(comparison: str, requested: tuple[str, ...], ours: str) -> bool:
    """Whether the session's authentication context meets RequestedAuthnContext."""
    if not requested:
        return True
    rank = CONTEXT_RANK.get(ours, -1)
    ranks = [CONTEXT_RANK[c] for c in requested if c in CONTEXT_RANK]
    if comparison == "exact":
        return ours in requested
    if not ranks:
        return False
    if comparison == "minimum":
        return rank >= min(ranks)
    if comparison == "better":
        return rank > min(ranks)
    return rank <= max(ranks)  # maximum


@dataclass(frozen=True)
class Target:
    """Where a Response goes and what it answers (from a verified request or IdP-initiated)."""

    sp_id: str
    acs_url: str
    in_response_to: str | None
    relay_state: str | None
    name_id_format: str | None = None
    authn_context_comparison: str = "exact"
    authn_context_classes: tuple[str, ...] = ()

    def to_params(self) -> dict[str, Any]:
        """As LoginRequest params (JSON-safe)."""
        return {
            "sp_id": self.sp_id,
            "acs_url": self.acs_url,
            "in_response_to": self.in_response_to,
            "relay_state": self.relay_state,
            "name_id_format": self.name_id_format,
            "authn_context_comparison": self.authn_context_comparison,
            "authn_context_classes": list(self.authn_context_classes),
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Target:
        """Rebuild from LoginRequest params."""
        return cls(
            sp_id=params["sp_id"],
            acs_url=params["acs_url"],
            in_response_to=params.get("in_response_to"),
            relay_state=params.get("relay_state"),
            name_id_format=params.get("name_id_format"),
            authn_context_comparison=params.get("authn_context_comparison", "exact"),
            authn_context_classes=tuple(params.get("authn_context_classes", ())),
        )


class SamlError(Exception):
    """A SAML status to send back to the SP's (already validated) ACS."""

    def __init__(self, status: str, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


class SamlFrontend:
    """The LoginFlow frontend of protocol "saml", and the logic behind /saml/*."""

    protocol = PROTOCOL

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time):
        # Derived keys: pairwise NameIDs and session indexes never reuse the app secret itself.
        self._pairwise_key = hmac.new(secret, b"bridge-saml-pairwise", hashlib.sha256).digest()
        self._session_key = hmac.new(secret, b"bridge-saml-session", hashlib.sha256).digest()
        self.clock = clock
        self.refresh_timer = RefreshTimer()

    # LoginFlow hooks ------------------------------------------------------------------------

    def complete(self, login_request: LoginRequest, session: SsoSession) -> Response:
        """Signed in: POST a signed Response to the SP (or show the apps page)."""
        if login_request.params.get("apps"):
            return redirect(url_for("saml.apps"), 303)
        target = Target.from_params(login_request.params)
        sp = service_provider(target.sp_id)
        if sp is None:
            return error_page("This application is no longer available.")
        try:
            message, name_id, session_index = self.build_sso_response(sp, session, target)
        except SamlError as exc:
            log.info("saml request refused", extra={"relying_party": sp.id, "status": exc.status})
            return self.error_response(sp, target, exc.status, exc.message)
        self._record_participant(session, sp, name_id, session_index)
        return bindings.post_form(target.acs_url, "SAMLResponse", message, target.relay_state)

    def fail(self, login_request: LoginRequest, error: LoginError) -> Response:
        """IsPassive without a usable session: NoPassive to the SP."""
        if login_request.params.get("apps"):
            return error_page(error.message)
        target = Target.from_params(login_request.params)
        sp = service_provider(target.sp_id)
        if sp is None:
            return error_page("This application is no longer available.")
        return self.error_response(sp, target, STATUS_NO_PASSIVE, "The user is not signed in.")

    # Responses ------------------------------------------------------------------------------

    def session_index(self, session: SsoSession) -> str:
        """An opaque SessionIndex for this SSO session (reveals nothing of the cookie)."""
        digest = hmac.new(self._session_key, session.id.encode(), hashlib.sha256).hexdigest()
        return "_" + digest[:40]

    def choose_name_id(
        self, sp: SamlRelyingParty, session: SsoSession, subject: str, requested: str | None
    ) -> NameId:
        """The NameID for this SP from the request's NameIDPolicy and the SP's formats."""
        allowed = [NAMEID_FORMATS[name] for name in sp.name_id_formats]
        if requested in (None, NAMEID_UNSPECIFIED):
            name_format = allowed[0]  # "unspecified" asks the IdP to choose
        elif requested in allowed:
            name_format = requested
        else:
            raise SamlError(STATUS_INVALID_NAMEID_POLICY, "That NameID format is not offered.")
        idp, audience = idp_entity_id(), sp.entity_id
        if name_format == NAMEID_PERSISTENT:
            value = subject
            if sp.pairwise_persistent:
                mac = hmac.new(
                    self._pairwise_key,
                    audience.encode() + b"\0" + subject.encode(),
                    hashlib.sha256,
                ).digest()
                value = base64.urlsafe_b64encode(mac).decode().rstrip("=")
            return NameId(value, name_format, idp, audience)
        if name_format == NAMEID_TRANSIENT:
            return NameId("_" + secrets.token_hex(16), name_format, idp, audience)
        if name_format == NAMEID_EMAIL:
            if not session.identity.email:
                raise SamlError(STATUS_INVALID_NAMEID_POLICY, "The user has no email address.")
            return NameId(session.identity.email, name_format)
        return NameId(subject, name_format)

    def build_sso_response(
        self, sp: SamlRelyingParty, session: SsoSession, target: Target
    ) -> tuple[bytes, NameId, str]:
        """The serialized, signed (and if asked, encrypted) Response for a signed-in session."""
        identity = session.identity
        context_class = (
            identity.authentication.context_class
            if identity.authentication
            else PASSWORD_PROTECTED_TRANSPORT
        )
        if not context_satisfied(
            target.authn_context_comparison, target.authn_context_classes, context_class
        ):
            raise SamlError(STATUS_NO_AUTHN_CONTEXT, "The requested authentication is not offered.")
        try:
            released = release(identity, sp.release, sp.subject)
        except AccessDenied as exc:
            raise SamlError(STATUS_REQUEST_DENIED, "Access to this application is denied.") from exc
        name_id = self.choose_name_id(sp, session, released.subject, target.name_id_format)
        now = datetime.fromtimestamp(self.clock(), UTC)
        issuer = idp_entity_id()
        session_index = self.session_index(session)
        try:
            assertion = self._assertion(sp, session, target, released, name_id, now)
        except ValueError:
            # lxml refuses characters XML cannot carry (control characters): say so, no 500.
            raise SamlError(STATUS_RESPONDER, "A released value cannot be sent in SAML.") from None
        signer = self.signer()
        if sp.sign_assertion:
            signer.sign(assertion)
        if sp.encrypt_assertion and sp.encryption_certificates:
            assertion = encrypt_assertion(assertion, sp.encryption_certificates[0])
        response = build_response(issuer, target.acs_url, target.in_response_to, now)
        response.append(assertion)
        if sp.sign_response:
            signer.sign(response)
        return serialize(response), name_id, session_index

    def _assertion(
        self,
        sp: SamlRelyingParty,
        session: SsoSession,
        target: Target,
        released: Release,
        name_id: NameId,
        now: datetime,
    ) -> etree._Element:
        context_class = (
            session.identity.authentication.context_class
            if session.identity.authentication
            else PASSWORD_PROTECTED_TRANSPORT
        )
        return build_assertion(
            AssertionContent(
                issuer=idp_entity_id(),
                audience=sp.entity_id,
                recipient=target.acs_url,
                in_response_to=target.in_response_to,
                name_id=name_id,
                authn_instant=datetime.fromtimestamp(session.auth_time, UTC),
                session_index=self.session_index(session),
                session_not_on_or_after=datetime.fromtimestamp(session.absolute_expiry, UTC),
                context_class=context_class,
                attributes=released.attributes,
            ),
            now,
            services().config.saml.assertion_lifetime_seconds,
        )

    def error_response(
        self, sp: SamlRelyingParty, target: Target, status: str, message: str
    ) -> Response:
        """A signed Response carrying only an error status, POSTed to the validated ACS."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        response = build_response(
            idp_entity_id(), target.acs_url, target.in_response_to, now, status, message
        )
        self.signer().sign(response)
        return bindings.post_form(
            target.acs_url, "SAMLResponse", serialize(response), target.relay_state
        )

    def signer(self) -> Signer:
        """The signer of the current SAML key."""
        return signer_for(services().keys.current("saml"))

    def _record_participant(
        self, session: SsoSession, sp: SamlRelyingParty, name_id: NameId, session_index: str
    ) -> None:
        record = {
            "sp_id": sp.id,
            "name_id": name_id.value,
            "format": name_id.format,
            "name_qualifier": name_id.name_qualifier,
            "sp_name_qualifier": name_id.sp_name_qualifier,
            "session_index": session_index,
        }
        ttl = max(session.absolute_expiry - self.clock(), 1.0)
        store = services().store
        key = f"{_session_key(session)}:{sp.id}"
        if store.get(PARTICIPANT_KIND, key) != record:
            store.put(PARTICIPANT_KIND, key, record, ttl)
        services().sessions.add_participant(session, PARTICIPANT_PREFIX + sp.id)

    def participant(self, session_id: str, sp_id: str) -> dict[str, Any] | None:
        """What the bridge told this SP about this session (NameID, SessionIndex)."""
        key = f"{hashlib.sha256(session_id.encode()).hexdigest()}:{sp_id}"
        return services().store.get(PARTICIPANT_KIND, key)

    # Single logout --------------------------------------------------------------------------

    def propagate_logout(self, session: SsoSession, done_url: str) -> Response | None:
        """IdP-initiated SLO (from /logout): visit every SAML SP of the session, then done_url."""
        chain = self._new_chain(session, exclude=None, finish={"url": done_url})
        if not chain["remaining"]:
            return None
        return self.continue_logout(secrets.token_urlsafe(24), chain)

    def start_sp_logout(
        self,
        session: SsoSession | None,
        sp: SamlRelyingParty,
        request_id: str,
        relay_state: str | None,
        endpoint: SamlEndpoint,
    ) -> Response:
        """SP-initiated SLO: end the session, visit the other SPs, answer the initiating SP."""
        finish = {
            "sp_id": sp.id,
            "in_response_to": request_id,
            "relay_state": relay_state,
            "url": endpoint.response_url or endpoint.url,
            "binding": endpoint.binding,
        }
        if session is None:
            return self._finish_logout({"finish": finish, "partial": False})
        services().sessions.destroy(session.id)
        chain = self._new_chain(session, exclude=sp.id, finish=finish)
        self._forget_participant(session.id, sp.id)
        return self.continue_logout(secrets.token_urlsafe(24), chain)

    def _new_chain(
        self, session: SsoSession, exclude: str | None, finish: dict[str, Any]
    ) -> dict[str, Any]:
        remaining = []
        for participant in session.participants:
            if not participant.startswith(PARTICIPANT_PREFIX):
                continue
            sp_id = participant.removeprefix(PARTICIPANT_PREFIX)
            record = self.participant(session.id, sp_id)
            if sp_id != exclude and record is not None:
                remaining.append(record)
                self._forget_participant(session.id, sp_id)
        return {"remaining": remaining, "finish": finish, "partial": False, "pending": None}

    def _forget_participant(self, session_id: str, sp_id: str) -> None:
        key = f"{hashlib.sha256(session_id.encode()).hexdigest()}:{sp_id}"
        services().store.delete(PARTICIPANT_KIND, key)

    def continue_logout(self, chain_id: str, chain: dict[str, Any]) -> Response:
        """Send a LogoutRequest to the next SP of the chain, or finish it."""
        while chain["remaining"]:
            record = chain["remaining"].pop(0)
            sp = service_provider(record["sp_id"])
            endpoint = _slo_endpoint(sp) if sp else None
            if sp is None or endpoint is None:
                chain["partial"] = True
                continue
            now = datetime.fromtimestamp(self.clock(), UTC)
            message = build_logout_request(
                idp_entity_id(),
                endpoint.url,
                NameId(
                    record["name_id"],
                    record["format"],
                    record.get("name_qualifier"),
                    record.get("sp_name_qualifier"),
                ),
                record.get("session_index"),
                now,
                services().config.saml.assertion_lifetime_seconds,
            )
            chain["pending"] = {"sp_id": sp.id, "request_id": message.get("ID")}
            services().store.put(LOGOUT_KIND, chain_id, chain, LOGOUT_CHAIN_SECONDS)
            signer = self.signer()
            if endpoint.binding == "redirect":
                return bindings.send_redirect(
                    endpoint.url, "SAMLRequest", message, chain_id, signer
                )
            signer.sign(message)
            return bindings.post_form(endpoint.url, "SAMLRequest", serialize(message), chain_id)
        services().store.delete(LOGOUT_KIND, chain_id)
        return self._finish_logout(chain)

    def logout_answered(
        self, chain_id: str | None, sp: SamlRelyingParty, in_response_to: str, success: bool
    ) -> Response:
        """An SP answered our LogoutRequest: continue the chain it belongs to."""
        chain = services().store.take(LOGOUT_KIND, chain_id) if chain_id else None
        pending = (chain or {}).get("pending") or {}
        if chain is None or pending.get("sp_id") != sp.id:
            return error_page("This sign-out is not in progress any more.")
        if not hmac.compare_digest(pending.get("request_id", ""), in_response_to):
            return error_page("This sign-out answer does not match the request.")
        if not success:
            chain["partial"] = True
        chain["pending"] = None
        return self.continue_logout(chain_id or "", chain)

    def _finish_logout(self, chain: dict[str, Any]) -> Response:
        finish = chain["finish"]
        if "sp_id" not in finish:
            return redirect(finish["url"], 303)
        sp = service_provider(finish["sp_id"])
        if sp is None:
            return redirect(url_for("auth.logged_out"), 303)
        now = datetime.fromtimestamp(self.clock(), UTC)
        status = "urn:oasis:names:tc:SAML:2.0:status:PartialLogout" if chain["partial"] else (
            STATUS_SUCCESS
        )
        message = build_logout_response(
            idp_entity_id(), finish["url"], finish["in_response_to"], now, status
        )
        signer = self.signer()
        if finish["binding"] == "redirect":
            return bindings.send_redirect(
                finish["url"], "SAMLResponse", message, finish["relay_state"], signer
            )
        signer.sign(message)
        return bindings.post_form(
            finish["url"], "SAMLResponse", serialize(message), finish["relay_state"]
        )


def _slo_endpoint(sp: SamlRelyingParty) -> SamlEndpoint | None:
    # Redirect first: no page of our own is needed to carry it.
    for binding in ("redirect", "post"):
        for endpoint in sp.slo:
            if endpoint.binding == binding:
                return endpoint
    return None


def slo_endpoint(sp: SamlRelyingParty) -> SamlEndpoint | None:
    """The SP's SingleLogoutService the bridge uses (Redirect preferred)."""
    return _slo_endpoint(sp)


def _session_key(session: SsoSession) -> str:
    return hashlib.sha256(session.id.encode()).hexdigest()


def checked_relay_state(value: str | None) -> str | None:
    """RelayState, at most 80 bytes (S09)."""
    return check_relay_state(value)
