"""Messages from service providers: decode the bindings, parse once, verify, read (S02, S04, S11).

Every inbound SAML message goes through `parse_xml`, the one hardened parser: no DTD (any
DOCTYPE is refused), no entities, no network, no huge trees, comments kept so that a value with
a comment inside is refused rather than silently shortened. Values are read from the same tree
whose signature was checked.
"""

from __future__ import annotations

import base64
import binascii
import threading
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from lxml import etree
from onelogin.saml2 import xmlparser

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
ENTITY_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
MAX_RELAY_STATE_BYTES = 80


class MessageError(Exception):
    """An inbound message the bridge refuses; `status` is the HTTP status of the error page."""

    def __init__(self, message: str, status: int = 400):
        self.message = message
        self.status = status
        super().__init__(message)


class MessageTooLarge(MessageError):
    """Larger than the configured bound, before or after inflating (S11)."""

    def __init__(self, message: str = "The SAML message is too large."):
        super().__init__(message, 413)


class _Parsers(threading.local):
    def __init__(self) -> None:
        self.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            remove_blank_text=False,
        )


_parsers = _Parsers()


def parse_xml(data: bytes) -> etree._Element:
    """The one parser for untrusted SAML XML: refuses DTDs and entities; raises MessageError."""
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise MessageError("XML with a document type declaration is not accepted.")
    try:
        root = xmlparser.fromstring(
            data, parser=_parsers.parser, forbid_dtd=True, forbid_entities=True
        )
    except (etree.XMLSyntaxError, ValueError):
        raise MessageError("The SAML message is not well-formed XML.") from None
    except (xmlparser.DTDForbidden, xmlparser.EntitiesForbidden):
        raise MessageError("XML with a document type declaration is not accepted.") from None
    if not isinstance(root.tag, str):
        raise MessageError("The SAML message is not well-formed XML.")
    return root


def element_text(element: etree._Element) -> str:
    """The whole text of a simple element; refused if it holds comments or children (S04)."""
    if len(element):
        raise MessageError(f"{etree.QName(element).localname} must contain only text.")
    return element.text or ""


def _b64decode(value: str, limit: int) -> bytes:
    if len(value) > (limit * 4) // 3 + 8:
        raise MessageTooLarge()
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("The SAML message is not valid Base64.") from None


def decode_redirect(value: str, limit: int) -> bytes:
    """Base64-decode and raw-inflate a Redirect-binding message with a bounded decompressor."""
    compressed = _b64decode(value, limit)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(compressed, limit + 1)
    except zlib.error:
        raise MessageError("The SAML message is not DEFLATE-compressed.") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise MessageTooLarge()
    return data


def decode_post(value: str, limit: int) -> bytes:
    """Base64-decode a POST-binding message."""
    data = _b64decode(value, limit)
    if len(data) > limit:
        raise MessageTooLarge()
    return data


def check_relay_state(value: str | None, limit: int = MAX_RELAY_STATE_BYTES) -> str | None:
    """RelayState is at most `limit` bytes (80 by default, S09) and is only ever echoed."""
    if value is not None and len(value.encode("utf-8")) > limit:
        raise MessageError(f"RelayState is longer than {limit} bytes.")
    return value


@dataclass(frozen=True)
class RedirectQuery:
    """The SAML parameters of a Redirect-binding URL, raw (for the signature) and decoded."""

    message: str
    relay_state: str | None
    sig_alg: str | None
    signature: str | None
    signed_part: str


def parse_redirect_query(raw_query: str, message_name: str) -> RedirectQuery:
    """Split a raw query string; the signed part is rebuilt from the encoded values as sent."""
    raw: dict[str, str] = {}
    for pair in raw_query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name in raw:
            raise MessageError(f"The parameter {name} is given twice.")
        raw[name] = value
    if message_name not in raw:
        raise MessageError(f"The {message_name} parameter is missing.")
    signed = f"{message_name}={raw[message_name]}"
    if "RelayState" in raw:
        signed += f"&RelayState={raw['RelayState']}"
    if "SigAlg" in raw:
        signed += f"&SigAlg={raw['SigAlg']}"
    decoded = {name: unquote_plus(value) for name, value in raw.items()}
    return RedirectQuery(
        message=decoded[message_name],
        relay_state=decoded.get("RelayState"),
        sig_alg=decoded.get("SigAlg"),
        signature=decoded.get("Signature"),
        signed_part=signed,
    )


def parse_instant(value: str | None) -> datetime:
    """An xs:dateTime in UTC, as SAML requires."""
    if not value or len(value) > 40 or not value.endswith("Z"):
        raise MessageError("IssueInstant is missing or not a UTC time.")
    try:
        instant = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise MessageError("IssueInstant is not a valid time.") from None
    return instant.astimezone(UTC)


def _bool(value: str | None, name: str) -> bool:
    if value is None or value in ("false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise MessageError(f"{name} must be a boolean.")


@dataclass(frozen=True)
class MessageHeader:
    """What every SAML request/response carries: who, which, when, to where."""

    root: etree._Element
    id: str
    issuer: str
    issue_instant: datetime
    destination: str | None
    signed: bool


def read_header(root: etree._Element, expected_tag: str) -> MessageHeader:
    """Check the element, version and ID, and read Issuer, IssueInstant and Destination."""
    if root.tag != f"{{{SAMLP}}}{expected_tag}":
        raise MessageError(f"Expected a SAML {expected_tag}.")
    if root.get("Version") != "2.0":
        raise MessageError("Only SAML 2.0 messages are accepted.")
    message_id = root.get("ID") or ""
    if not 1 <= len(message_id) <= 256 or not message_id.isprintable():
        raise MessageError("The message ID is missing or invalid.")
    issuers = root.findall(f"{{{SAML}}}Issuer")
    if len(issuers) != 1:
        raise MessageError("The message must name its issuer exactly once.")
    if issuers[0].get("Format") not in (None, ENTITY_FORMAT):
        raise MessageError("The issuer must be an entity ID.")
    issuer = element_text(issuers[0]).strip()
    if not issuer:
        raise MessageError("The message must name its issuer.")
    signed = root.find(f"{{{DSIG}}}Signature") is not None
    return MessageHeader(
        root=root,
        id=message_id,
        issuer=issuer,
        issue_instant=parse_instant(root.get("IssueInstant")),
        destination=root.get("Destination"),
        signed=signed,
    )


@dataclass(frozen=True)
class AuthnRequest:
    """An AuthnRequest as read from its verified tree."""

    header: MessageHeader
    acs_url: str | None
    acs_index: int | None
    protocol_binding: str | None
    force_authn: bool
    is_passive: bool
    name_id_format: str | None
    sp_name_qualifier: str | None
    allow_create: bool
    authn_context_comparison: str
    authn_context_classes: tuple[str, ...]


def read_authn_request(root: etree._Element) -> AuthnRequest:
    """Read an AuthnRequest; raise MessageError for anything malformed."""
    header = read_header(root, "AuthnRequest")
    index_text = root.get("AssertionConsumerServiceIndex")
    acs_index = None
    if index_text is not None:
        if not index_text.isdigit() or len(index_text) > 5:
            raise MessageError("AssertionConsumerServiceIndex is not a number.")
        acs_index = int(index_text)
    acs_url = root.get("AssertionConsumerServiceURL")
    if acs_url is not None and acs_index is not None:
        raise MessageError("Give either AssertionConsumerServiceURL or its index, not both.")
    policy = root.find(f"{{{SAMLP}}}NameIDPolicy")
    name_id_format = sp_name_qualifier = None
    allow_create = False
    if policy is not None:
        name_id_format = policy.get("Format")
        sp_name_qualifier = policy.get("SPNameQualifier")
        allow_create = _bool(policy.get("AllowCreate"), "AllowCreate")
    comparison, classes = "exact", ()
    requested = root.find(f"{{{SAMLP}}}RequestedAuthnContext")
    if requested is not None:
        comparison = requested.get("Comparison") or "exact"
        if comparison not in ("exact", "minimum", "maximum", "better"):
            raise MessageError("RequestedAuthnContext has an unknown Comparison.")
        classes = tuple(
            element_text(item).strip()
            for item in requested.findall(f"{{{SAML}}}AuthnContextClassRef")
        )
        if requested.findall(f"{{{SAML}}}AuthnContextDeclRef"):
            classes = (*classes, "decl-ref")  # declarations are never satisfied
    return AuthnRequest(
        header=header,
        acs_url=acs_url,
        acs_index=acs_index,
        protocol_binding=root.get("ProtocolBinding"),
        force_authn=_bool(root.get("ForceAuthn"), "ForceAuthn"),
        is_passive=_bool(root.get("IsPassive"), "IsPassive"),
        name_id_format=name_id_format,
        sp_name_qualifier=sp_name_qualifier,
        allow_create=allow_create,
        authn_context_comparison=comparison,
        authn_context_classes=classes,
    )


@dataclass(frozen=True)
class LogoutRequest:
    """A LogoutRequest from a service provider."""

    header: MessageHeader
    name_id: str
    session_indexes: tuple[str, ...]


def read_logout_request(root: etree._Element) -> LogoutRequest:
    """Read a LogoutRequest (an EncryptedID is not supported and is refused)."""
    header = read_header(root, "LogoutRequest")
    name_id = root.find(f"{{{SAML}}}NameID")
    if name_id is None:
        raise MessageError("The LogoutRequest must carry a NameID.")
    indexes = tuple(
        element_text(item).strip() for item in root.findall(f"{{{SAMLP}}}SessionIndex")
    )
    return LogoutRequest(header=header, name_id=element_text(name_id), session_indexes=indexes)


@dataclass(frozen=True)
class LogoutResponse:
    """A LogoutResponse from a service provider, answering one of ours."""

    header: MessageHeader
    in_response_to: str
    status: str


def read_logout_response(root: etree._Element) -> LogoutResponse:
    """Read a LogoutResponse."""
    header = read_header(root, "LogoutResponse")
    code = root.find(f"{{{SAMLP}}}Status/{{{SAMLP}}}StatusCode")
    if code is None or not code.get("Value"):
        raise MessageError("The LogoutResponse has no status.")
    return LogoutResponse(
        header=header,
        in_response_to=root.get("InResponseTo") or "",
        status=code.get("Value") or "",
    )
