"""EncryptedAssertion for service providers that publish an encryption certificate.

AES-256-GCM for the assertion, RSA-OAEP (MGF1, SHA-1 inside OAEP as XML Encryption 1.0's
rsa-oaep-mgf1p defines it) for the session key, done by python-xmlsec.
"""

from __future__ import annotations

from functools import lru_cache

import xmlsec
from lxml import etree

from bridge.frontends.saml.signing import pem_certificate

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
XENC = "http://www.w3.org/2001/04/xmlenc#"


@lru_cache(maxsize=64)
def _keys_manager_key(certificate: str) -> bytes:
    return pem_certificate(certificate).encode("ascii")


def encrypt_assertion(assertion: etree._Element, certificate: str) -> etree._Element:
    """Return a saml:EncryptedAssertion holding the (already signed) assertion."""
    wrapper = etree.Element(f"{{{SAML}}}EncryptedAssertion", nsmap={"saml": SAML})
    template = xmlsec.template.encrypted_data_create(
        wrapper, xmlsec.Transform.AES256_GCM, type=xmlsec.EncryptionType.ELEMENT, ns="xenc"
    )
    xmlsec.template.encrypted_data_ensure_cipher_value(template)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(template, ns="ds")
    encrypted_key = xmlsec.template.add_encrypted_key(key_info, xmlsec.Transform.RSA_OAEP)
    xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)

    manager = xmlsec.KeysManager()
    manager.add_key(
        xmlsec.Key.from_memory(_keys_manager_key(certificate), xmlsec.KeyFormat.CERT_PEM, None)
    )
    context = xmlsec.EncryptionContext(manager)
    context.key = xmlsec.Key.generate(xmlsec.KeyData.AES, 256, xmlsec.KeyDataType.SESSION)
    # encrypt_xml replaces the assertion with EncryptedData; keep it in a scratch parent.
    holder = etree.Element("holder")
    holder.append(assertion)
    encrypted = context.encrypt_xml(template, assertion)
    wrapper.append(encrypted)
    return wrapper
