"""The SAML endpoints: /saml/metadata, /saml/sso, /saml/slo, IdP-initiated sign-on, app list."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, abort, make_response, redirect, request, url_for

from bridge.frontends.saml import frontend as saml
from bridge.frontends.saml.frontend import SamlFrontend, Target, error_page
from bridge.frontends.saml.metadata import IdpDescription, build_idp_metadata
from bridge.frontends.saml.model import NAMEID_FORMATS, SamlEndpoint
from bridge.frontends.saml.requests import (
    MessageError,
    MessageHeader,
    check_relay_state,
    decode_post,
    decode_redirect,
    parse_redirect_query,
    parse_xml,
    read_authn_request,
    read_logout_request,
    read_logout_response,
)
from bridge.frontends.saml.signing import SignatureError, signer_for, verify_enveloped, verify_query
from bridge.login_flow import LoginRequest
from bridge.mapping import AccessDenied, release
from bridge.relying_parties import SamlRelyingParty
from bridge.services import services
from bridge.web.auth import clear_session_cookie, current_session, record_sign_out

bp = Blueprint("saml", __name__, url_prefix="/saml")
PENDING_SECONDS = 300


def _frontend() -> SamlFrontend:
    return services().login_flow.frontends[saml.PROTOCOL]  # type: ignore[return-value]


@bp.before_request
def _enabled() -> None:
    if not services().config.saml.enabled:
        abort(404)


@bp.before_app_request
def _refresh_metadata() -> None:
    # Cheap when nothing is due: a monotonic check, then at most one store claim per SP.
    bridge = services()
    if bridge.config.saml.enabled:
        minutes = bridge.config.saml.metadata_refresh_minutes
        _frontend().refresh_timer.poke(bridge.relying_parties, bridge.store, minutes)


@bp.errorhandler(MessageError)
def _refused(exc: MessageError) -> Response:
    # Our own fixed messages only: nothing from the request is echoed.
    return error_page(exc.message, exc.status)


@bp.get("/metadata")
def metadata() -> Response:
    """The IdP metadata: current and next signing certificates, SSO and SLO for both bindings."""
    config = services().config.saml
    keys = services().keys
    certificates = [key.certificate_der_b64() for key in keys.published("saml")]
    description = IdpDescription(
        entity_id=saml.idp_entity_id(),
        sso_url=saml.sso_url(),
        slo_url=saml.slo_url(),
        certificates=certificates,
        name_id_formats=list(NAMEID_FORMATS.values()),
        valid_for=timedelta(hours=config.metadata_valid_hours),
    )
    signer = signer_for(keys.current("saml")) if config.sign_metadata else None
    body = build_idp_metadata(description, datetime.now(UTC), signer)
    response = make_response(body)
    response.headers["Content-Type"] = "application/samlmetadata+xml"
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


# Inbound messages ----------------------------------------------------------------------------


class Inbound:
    """One inbound SAML message after decoding and parsing, with its binding's signature."""

    def __init__(self, field: str):
        limit = services().config.saml.max_message_bytes
        self.query = None
        if request.method == "GET":
            self.binding = "redirect"
            self.query = parse_redirect_query(request.query_string.decode("latin-1"), field)
            self.xml = decode_redirect(self.query.message, limit)
            self.relay_state = self.query.relay_state
        else:
            self.binding = "post"
            value = request.form.get(field)
            if not value:
                raise MessageError(f"The {field} parameter is missing.")
            self.xml = decode_post(value, limit)
            self.relay_state = request.form.get("RelayState")
        check_relay_state(self.relay_state, services().config.saml.max_relay_state_bytes)
        self.root = parse_xml(self.xml)

    def verify(self, header: MessageHeader, sp: SamlRelyingParty, required: bool) -> None:
        """Verify the binding's signature with the SP's registered keys (S05, S06)."""
        try:
            if self.query is not None:
                if header.signed:
                    raise SignatureError("the Redirect binding carries its signature in the URL")
                if self.query.signature is not None or self.query.sig_alg is not None:
                    verify_query(
                        self.query.signed_part,
                        self.query.signature or "",
                        self.query.sig_alg or "",
                        sp.signing_certificates,
                        sp.allow_sha1,
                    )
                elif required:
                    raise SignatureError("this application must sign its requests")
            elif header.signed:
                verify_enveloped(self.root, sp.signing_certificates, sp.allow_sha1)
            elif required:
                raise SignatureError("this application must sign its requests")
        except SignatureError as exc:
            raise MessageError(f"The request's signature is not accepted: {exc}.") from None
        if (self.query is not None and self.query.signature) or header.signed:
            if header.destination is None:
                raise MessageError("A signed request must name its Destination.")


def _known_sp(header: MessageHeader) -> SamlRelyingParty:
    sp = saml.find_service_provider(header.issuer)
    if sp is None:
        raise MessageError("This application is not registered with the bridge.", 403)
    return sp


def _check_destination(header: MessageHeader, expected: str) -> None:
    if header.destination is not None and header.destination != expected:
        raise MessageError("The request was sent to another destination.")


@bp.route("/sso", methods=["GET", "POST"])
def sso() -> Response:
    """SP-initiated sign-on, HTTP-Redirect (GET) and HTTP-POST bindings."""
    inbound = Inbound("SAMLRequest")
    authn = read_authn_request(inbound.root)
    header = authn.header
    sp = _known_sp(header)
    inbound.verify(header, sp, required=sp.want_authn_requests_signed)
    _check_destination(header, saml.sso_url())
    frontend = _frontend()
    saml.check_time(header, frontend.clock())
    endpoint: SamlEndpoint = saml.resolve_acs(sp, authn)
    saml.remember_request_id(sp, header.id)
    target = Target(
        sp_id=sp.id,
        acs_url=endpoint.url,
        in_response_to=header.id,
        relay_state=inbound.relay_state,
        name_id_format=authn.name_id_format,
        authn_context_comparison=authn.authn_context_comparison,
        authn_context_classes=authn.authn_context_classes,
    )
    # From here on the ACS is registered: errors go back to the SP as SAML statuses.
    if authn.sp_name_qualifier not in (None, sp.entity_id):
        return frontend.error_response(
            sp, target, saml.STATUS_INVALID_NAMEID_POLICY, "Affiliations are not supported."
        )
    login_request = LoginRequest(
        protocol=saml.PROTOCOL,
        relying_party=sp.id,
        params=target.to_params(),
        force_authn=authn.force_authn,
        passive=authn.is_passive,
        sources=sp.sources,
    )
    if inbound.binding == "post":
        # A cross-site POST carries no SameSite=Lax session cookie; a same-site GET hop does.
        pending_id = secrets.token_urlsafe(24)
        services().store.put(
            saml.PENDING_KIND, pending_id, login_request.to_record(), PENDING_SECONDS
        )
        return redirect(url_for("saml.sso_continue", request=pending_id), 303)
    return services().login_flow.start(login_request, current_session())


@bp.get("/sso/continue")
def sso_continue() -> Response:
    """The GET hop after a POST-binding AuthnRequest (single use)."""
    pending_id = request.args.get("request", "")
    record = (
        services().store.take(saml.PENDING_KIND, pending_id) if 0 < len(pending_id) <= 64 else None
    )
    if record is None:
        return error_page("This sign-in request has expired. Please start again from the app.")
    return services().login_flow.start(LoginRequest.from_record(record), current_session())


@bp.get("/idp-initiated/<rp_id>")
def idp_initiated(rp_id: str) -> Response:
    """IdP-initiated sign-on to one SP: an unsolicited Response to its default ACS."""
    sp = saml.service_provider(rp_id) if len(rp_id) <= 64 else None
    if sp is None:
        return error_page("There is no such application.", 404)
    endpoint = saml.default_acs(sp)
    if endpoint is None:
        return error_page("This application has no assertion consumer service registered.")
    relay_state = check_relay_state(
        request.args.get("RelayState"), services().config.saml.max_relay_state_bytes
    )
    target = Target(sp_id=sp.id, acs_url=endpoint.url, in_response_to=None, relay_state=relay_state)
    login_request = LoginRequest(
        protocol=saml.PROTOCOL, relying_party=sp.id, params=target.to_params(), sources=sp.sources
    )
    return services().login_flow.start(login_request, current_session())


@bp.get("/apps")
def apps() -> Response:
    """The SAML applications the signed-in user may open."""
    from flask import render_template

    session = current_session()
    if session is None:
        return services().login_flow.start(
            LoginRequest(protocol=saml.PROTOCOL, params={"apps": True}), None
        )
    available = []
    for party in services().relying_parties.all():
        if not isinstance(party, SamlRelyingParty) or not party.enabled:
            continue
        if saml.default_acs(party) is None:
            continue
        if party.sources and session.identity.source not in party.sources:
            continue
        try:
            release(session.identity, party.release, party.subject)
        except AccessDenied:
            continue
        available.append(party)
    page = render_template("saml_apps.html", identity=session.identity, apps=available)
    return make_response(page)


# Single logout ----------------------------------------------------------------------------


@bp.route("/slo", methods=["GET", "POST"])
def slo() -> Response:
    """LogoutRequests from SPs, and LogoutResponses answering the bridge's own."""
    source = request.args if request.method == "GET" else request.form
    if "SAMLResponse" in source:
        return _logout_response()
    inbound = Inbound("SAMLRequest")
    logout = read_logout_request(inbound.root)
    header = logout.header
    sp = _known_sp(header)
    # Front-channel logout requests must be signed when the SP has keys (SAML profiles 4.4.3).
    inbound.verify(header, sp, required=bool(sp.signing_certificates))
    _check_destination(header, saml.slo_url())
    frontend = _frontend()
    saml.check_time(header, frontend.clock())
    saml.remember_request_id(sp, header.id)
    endpoint = saml.slo_endpoint(sp)
    if endpoint is None:
        raise MessageError("This application has no single logout service registered.")
    session = current_session()
    if session is not None:
        record = frontend.participant(session.id, sp.id)
        known = record is not None and record["name_id"] == logout.name_id
        if known and logout.session_indexes:
            known = record["session_index"] in logout.session_indexes
        if not known:
            # Not this browser's session at this SP: answer, but end nothing.
            session = None
    if session is not None:
        record_sign_out(session, relying_party=sp.id)
    response = frontend.start_sp_logout(session, sp, header.id, inbound.relay_state, endpoint)
    if session is not None:
        clear_session_cookie(response)
    return response


def _logout_response() -> Response:
    inbound = Inbound("SAMLResponse")
    answer = read_logout_response(inbound.root)
    header = answer.header
    sp = _known_sp(header)
    inbound.verify(header, sp, required=False)
    _check_destination(header, saml.slo_url())
    success = answer.status == saml.STATUS_SUCCESS
    return _frontend().logout_answered(inbound.relay_state, sp, answer.in_response_to, success)
