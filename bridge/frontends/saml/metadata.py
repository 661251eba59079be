"""SAML metadata: the bridge's IdP EntityDescriptor, and reading a service provider's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lxml import etree

from bridge.frontends.saml.model import (
    BINDING_POST,
    BINDING_REDIRECT,
    NAMEID_SHORT,
    normalize_certificate,
)
from bridge.frontends.saml.requests import MessageError, element_text, parse_xml
from bridge.frontends.saml.responses import instant, new_id
from bridge.frontends.saml.signing import SignatureError, Signer, verify_enveloped

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
_M = "{" + MD + "}"
_D = "{" + DSIG + "}"


class MetadataError(Exception):
    """Service-provider metadata that cannot be used, with the reason."""


@dataclass(frozen=True)
class IdpDescription:
    """What the bridge's IdP metadata says."""

    entity_id: str
    sso_url: str
    slo_url: str
    certificates: Sequence[str]
    name_id_formats: Sequence[str]
    valid_for: timedelta


def build_idp_metadata(
    idp: IdpDescription, now: datetime, signer: Signer | None = None
) -> bytes:
    """The IdP EntityDescriptor (current and next signing certificates), optionally signed."""
    root = etree.Element(_M + "EntityDescriptor", nsmap={"md": MD, "ds": DSIG})
    root.set("ID", new_id())
    root.set("entityID", idp.entity_id)
    root.set("validUntil", instant(now + idp.valid_for))
    descriptor = etree.SubElement(root, _M + "IDPSSODescriptor")
    descriptor.set("WantAuthnRequestsSigned", "false")
    descriptor.set("protocolSupportEnumeration", PROTOCOL)
    for certificate in idp.certificates:
        key = etree.SubElement(descriptor, _M + "KeyDescriptor", use="signing")
        data = etree.SubElement(etree.SubElement(key, _D + "KeyInfo"), _D + "X509Data")
        etree.SubElement(data, _D + "X509Certificate").text = certificate
    for binding in (BINDING_REDIRECT, BINDING_POST):
        etree.SubElement(
            descriptor, _M + "SingleLogoutService", Binding=binding, Location=idp.slo_url
        )
    for name_id_format in idp.name_id_formats:
        etree.SubElement(descriptor, _M + "NameIDFormat").text = name_id_format
    for binding in (BINDING_REDIRECT, BINDING_POST):
        etree.SubElement(
            descriptor, _M + "SingleSignOnService", Binding=binding, Location=idp.sso_url
        )
    if signer is not None:
        signer.sign(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _endpoint(element: etree._Element) -> dict[str, Any] | None:
    binding = {BINDING_POST: "post", BINDING_REDIRECT: "redirect"}.get(
        element.get("Binding") or ""
    )
    location = element.get("Location")
    if binding is None or not location:
        return None  # artifact, PAOS, SOAP: not spoken here
    endpoint: dict[str, Any] = {"url": location, "binding": binding}
    index = element.get("index")
    if index is not None and index.isdigit():
        endpoint["index"] = int(index)
    if element.get("isDefault") in ("true", "1"):
        endpoint["default"] = True
    if element.get("ResponseLocation"):
        endpoint["response_url"] = element.get("ResponseLocation")
    return endpoint


def parse_sp_metadata(data: bytes, signing_certificate: str | None = None) -> dict[str, Any]:
    """Relying-party settings from an SP's EntityDescriptor (signature checked if a cert is set).

    Returns the fields of SamlRelyingParty that metadata decides: entity_id, acs, slo,
    signing/encryption certificates, want_authn_requests_signed, sign_assertion,
    name_id_formats.
    """
    try:
        root = parse_xml(data)
    except MessageError as exc:
        raise MetadataError(exc.message) from None
    if root.tag != _M + "EntityDescriptor":
        raise MetadataError("expected one md:EntityDescriptor")
    if signing_certificate is not None:
        try:
            verify_enveloped(root, [signing_certificate])
        except SignatureError as exc:
            raise MetadataError(f"metadata signature: {exc}") from None
    entity_id = root.get("entityID")
    if not entity_id:
        raise MetadataError("the EntityDescriptor has no entityID")
    descriptors = root.findall(_M + "SPSSODescriptor")
    if len(descriptors) != 1:
        raise MetadataError("expected exactly one SPSSODescriptor")
    sp = descriptors[0]
    signing: list[str] = []
    encryption: list[str] = []
    for key in sp.findall(_M + "KeyDescriptor"):
        for certificate in key.iter(_D + "X509Certificate"):
            try:
                value = normalize_certificate(element_text(certificate))
            except (ValueError, MessageError):
                raise MetadataError("a KeyDescriptor holds an unreadable certificate") from None
            use = key.get("use")
            if use in (None, "signing") and value not in signing:
                signing.append(value)
            if use in (None, "encryption") and value not in encryption:
                encryption.append(value)
    acs = [
        endpoint
        for endpoint in map(_endpoint, sp.findall(_M + "AssertionConsumerService"))
        if endpoint is not None and endpoint["binding"] == "post"
    ]
    if not acs:
        raise MetadataError("the SP has no AssertionConsumerService with the HTTP-POST binding")
    slo = [
        endpoint
        for endpoint in map(_endpoint, sp.findall(_M + "SingleLogoutService"))
        if endpoint is not None
    ]
    formats = [
        NAMEID_SHORT[text]
        for text in (element_text(item).strip() for item in sp.findall(_M + "NameIDFormat"))
        if text in NAMEID_SHORT
    ]
    settings: dict[str, Any] = {
        "entity_id": entity_id,
        "acs": acs,
        "slo": slo,
        "signing_certificates": signing,
        "encryption_certificates": encryption,
        "want_authn_requests_signed": sp.get("AuthnRequestsSigned") in ("true", "1"),
    }
    if sp.get("WantAssertionsSigned") in ("true", "1"):
        settings["sign_assertion"] = True
    if formats:
        settings["name_id_formats"] = list(dict.fromkeys(formats))
    return settings
