"""Messages the bridge sends: Response/Assertion, LogoutRequest, LogoutResponse (S03).

Built with lxml's tree API in schema order; every value is set as text or as an attribute,
never pasted into markup, so a directory value such as `</saml:AttributeValue><saml:Attribute>`
stays the text of one AttributeValue.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from lxml import etree

from bridge.mapping import ReleasedAttribute

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NSMAP = {"samlp": SAMLP, "saml": SAML}
ASSERTION_NSMAP = {"saml": SAML}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_NO_PASSIVE = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_NO_AUTHN_CONTEXT = "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext"
STATUS_INVALID_NAMEID_POLICY = "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy"
STATUS_PARTIAL_LOGOUT = "urn:oasis:names:tc:SAML:2.0:status:PartialLogout"

_TOP_LEVEL = {
    STATUS_INVALID_NAMEID_POLICY: STATUS_REQUESTER,
    STATUS_PARTIAL_LOGOUT: STATUS_SUCCESS,
}

_S = "{" + SAML + "}"
_P = "{" + SAMLP + "}"


def new_id() -> str:
    """A message or assertion ID: an NCName with 128 bits of randomness."""
    return "_" + secrets.token_hex(16)


def instant(moment: datetime) -> str:
    """An xs:dateTime in UTC with second precision, as SAML peers expect."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NameId:
    """The NameID given to one service provider."""

    value: str
    format: str
    name_qualifier: str | None = None
    sp_name_qualifier: str | None = None


@dataclass(frozen=True)
class AssertionContent:
    """Everything that goes into one assertion."""

    issuer: str
    audience: str
    recipient: str
    in_response_to: str | None
    name_id: NameId
    authn_instant: datetime
    session_index: str
    session_not_on_or_after: datetime | None
    context_class: str
    attributes: Sequence[ReleasedAttribute]


def _name_id(parent: etree._Element, tag: str, name_id: NameId) -> etree._Element:
    element = etree.SubElement(parent, tag)
    element.set("Format", name_id.format)
    if name_id.name_qualifier:
        element.set("NameQualifier", name_id.name_qualifier)
    if name_id.sp_name_qualifier:
        element.set("SPNameQualifier", name_id.sp_name_qualifier)
    element.text = name_id.value
    return element


def build_assertion(content: AssertionContent, now: datetime, lifetime: int) -> etree._Element:
    """A saml:Assertion in schema order (Issuer, [Signature], Subject, Conditions, statements)."""
    expiry = instant(now + timedelta(seconds=lifetime))
    assertion = etree.Element(_S + "Assertion", nsmap=ASSERTION_NSMAP)
    assertion.set("ID", new_id())
    assertion.set("Version", "2.0")
    assertion.set("IssueInstant", instant(now))
    etree.SubElement(assertion, _S + "Issuer").text = content.issuer

    subject = etree.SubElement(assertion, _S + "Subject")
    _name_id(subject, _S + "NameID", content.name_id)
    confirmation = etree.SubElement(subject, _S + "SubjectConfirmation", Method=BEARER)
    data = etree.SubElement(confirmation, _S + "SubjectConfirmationData")
    if content.in_response_to:
        data.set("InResponseTo", content.in_response_to)
    data.set("NotOnOrAfter", expiry)
    data.set("Recipient", content.recipient)

    conditions = etree.SubElement(assertion, _S + "Conditions")
    conditions.set("NotBefore", instant(now))
    conditions.set("NotOnOrAfter", expiry)
    restriction = etree.SubElement(conditions, _S + "AudienceRestriction")
    etree.SubElement(restriction, _S + "Audience").text = content.audience

    statement = etree.SubElement(assertion, _S + "AuthnStatement")
    statement.set("AuthnInstant", instant(content.authn_instant))
    if content.session_not_on_or_after is not None:
        statement.set("SessionNotOnOrAfter", instant(content.session_not_on_or_after))
    statement.set("SessionIndex", content.session_index)
    context = etree.SubElement(statement, _S + "AuthnContext")
    etree.SubElement(context, _S + "AuthnContextClassRef").text = content.context_class

    if content.attributes:
        attributes = etree.SubElement(assertion, _S + "AttributeStatement")
        for released in content.attributes:
            attribute = etree.SubElement(attributes, _S + "Attribute")
            attribute.set("Name", released.name)
            attribute.set("NameFormat", released.name_format)
            if released.friendly_name:
                attribute.set("FriendlyName", released.friendly_name)
            for value in released.values:
                etree.SubElement(attribute, _S + "AttributeValue").text = value
    return assertion


def _protocol_message(
    tag: str, issuer: str, destination: str | None, in_response_to: str | None, now: datetime
) -> etree._Element:
    message = etree.Element(_P + tag, nsmap=NSMAP)
    message.set("ID", new_id())
    message.set("Version", "2.0")
    message.set("IssueInstant", instant(now))
    if destination:
        message.set("Destination", destination)
    if in_response_to:
        message.set("InResponseTo", in_response_to)
    etree.SubElement(message, _S + "Issuer").text = issuer
    return message


def _status(parent: etree._Element, code: str, message: str | None) -> None:
    status = etree.SubElement(parent, _P + "Status")
    top = etree.SubElement(status, _P + "StatusCode")
    if code in (STATUS_SUCCESS, STATUS_REQUESTER, STATUS_RESPONDER):
        top.set("Value", code)
    else:
        # Second-level codes sit under the top-level code that says whose fault it is.
        top.set("Value", _TOP_LEVEL.get(code, STATUS_RESPONDER))
        etree.SubElement(top, _P + "StatusCode").set("Value", code)
    if message:
        etree.SubElement(status, _P + "StatusMessage").text = message


def build_response(
    issuer: str,
    destination: str,
    in_response_to: str | None,
    now: datetime,
    status: str = STATUS_SUCCESS,
    status_message: str | None = None,
) -> etree._Element:
    """A samlp:Response with Issuer and Status; the (signed) assertion is appended after it."""
    response = _protocol_message("Response", issuer, destination, in_response_to, now)
    _status(response, status, status_message)
    return response


def build_logout_request(
    issuer: str,
    destination: str,
    name_id: NameId,
    session_index: str | None,
    now: datetime,
    lifetime: int,
) -> etree._Element:
    """A samlp:LogoutRequest for one service provider."""
    request = _protocol_message("LogoutRequest", issuer, destination, None, now)
    request.set("NotOnOrAfter", instant(now + timedelta(seconds=lifetime)))
    request.set("Reason", "urn:oasis:names:tc:SAML:2.0:logout:user")
    _name_id(request, _S + "NameID", name_id)
    if session_index:
        etree.SubElement(request, _P + "SessionIndex").text = session_index
    return request


def build_logout_response(
    issuer: str, destination: str, in_response_to: str, now: datetime, status: str
) -> etree._Element:
    """A samlp:LogoutResponse answering a service provider's LogoutRequest."""
    response = _protocol_message("LogoutResponse", issuer, destination, in_response_to, now)
    _status(response, status, None)
    return response


def serialize(element: etree._Element) -> bytes:
    """UTF-8 XML with a declaration."""
    return etree.tostring(element, xml_declaration=True, encoding="UTF-8")
