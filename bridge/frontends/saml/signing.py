"""XML signatures: sign what the bridge sends, verify what service providers send (S01, S05, S06).

Verification goes through python3-saml's xmlsec helpers (`validate_node_sign`,
`validate_binary_sign`) after a strict profile check of the Signature element, modelled on
OpenSAML's SAMLSignatureProfileValidator: exactly one Signature, a direct child of the signed
root, exactly one Reference that points at that root, only the enveloped-signature and exclusive
C14N transforms, algorithms from an allow-list, no duplicate IDs, and only keys the bridge has
registered for that peer (KeyInfo in the message is never trusted).

Signing uses python-xmlsec (the library under python3-saml's `add_sign`) with the same template
as `add_sign` (exclusive C14N, enveloped, RSA-SHA256, SHA-256, X509Data), but keeps the parsed
key between calls and places the Signature right after the element's own Issuer (its schema
position): `add_sign` reloads the PEM key and certificate on every call and signs after the
first Issuer found in its input, which costs a third of the time per response (docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from functools import lru_cache
from typing import Any, TypeVar

import xmlsec
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from bridge.keys import SigningKey

DSIG = "http://www.w3.org/2000/09/xmldsig#"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"

STRONG_SIGNATURES = frozenset({RSA_SHA256, RSA_SHA384, RSA_SHA512})
STRONG_DIGESTS = frozenset({SHA256, SHA384, SHA512})
ALLOWED_TRANSFORMS = frozenset({ENVELOPED, EXC_C14N})
T = TypeVar("T")


class SignatureError(Exception):
    """A signature is missing, malformed, of a refused algorithm, or does not verify."""


def signature_algorithms(allow_sha1: bool) -> frozenset[str]:
    """Signature algorithms accepted from a peer (SHA-1 only where explicitly allowed)."""
    return STRONG_SIGNATURES | {RSA_SHA1} if allow_sha1 else STRONG_SIGNATURES


def digest_algorithms(allow_sha1: bool) -> frozenset[str]:
    """Digest algorithms accepted from a peer."""
    return STRONG_DIGESTS | {SHA1} if allow_sha1 else STRONG_DIGESTS


def pem_certificate(der_b64: str) -> str:
    """A Base64 DER certificate (as kept in relying-party settings) as PEM."""
    lines = [der_b64[i : i + 64] for i in range(0, len(der_b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


# --------------------------------------------------------------------------------------------
# Where XML IDs are registered


class IdRegistrationThread:
    """Runs the xmlsec steps that register XML IDs on one thread, renewed every N uses.

    xmlsec finds the element a Reference's "#ID" names through the document's ID table, filled
    by `xmlsec.tree.add_ids`. libxml2 keeps each registered ID value in the document's string
    dictionary, and lxml gives every document made on a thread that thread's dictionary, which
    lives as long as the thread: a request thread would keep every message ID it ever signed or
    verified, about 70 bytes each, for the life of the worker (measured in docs/benchmarks.md).
    The work is done here, on a copy of the element made on this thread, so those strings go
    away with the thread when it is renewed.
    """

    def __init__(self, renew_after: int = 10_000):
        self.renew_after = renew_after
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._owner_pid = 0
        self._uses = 0

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """Call function(*args) on the ID-registering thread and return its result."""
        with self._lock:
            # A forked worker inherits the executor but not its thread: start a new one.
            if self._executor is None or self._uses >= self.renew_after or (
                self._owner_pid != os.getpid()
            ):
                if self._executor is not None and self._owner_pid == os.getpid():
                    self._executor.shutdown(wait=False)  # queued work still runs, then it ends
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="bridge-xml-ids")
                self._owner_pid = os.getpid()
                self._uses = 0
            self._uses += 1
            # Submitted under the lock, so nothing is ever handed to an executor shut down.
            future = self._executor.submit(function, *args)
        return future.result()


id_registration = IdRegistrationThread()


def _child(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.find(f".//{{{DSIG}}}{tag}")
    if found is None:
        raise SignatureError(f"ds:{tag} is missing")
    return found


# --------------------------------------------------------------------------------------------
# Signing


class Signer:
    """Signs SAML elements with one SAML key (RSA-SHA256, exclusive C14N, enveloped)."""

    def __init__(self, key: SigningKey):
        from cryptography.hazmat.primitives import serialization

        self.key = key
        self._pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._certificate_b64 = key.certificate_der_b64()
        self._local = threading.local()

    def _xmlsec_key(self) -> xmlsec.Key:
        # xmlsec keys are not documented as thread-safe; one per thread is cheap. The key is
        # loaded without its certificate: xmlsec copies the key into every signing context, and
        # copying the certificate along made each signature ~0.1 ms dearer. The certificate is
        # written into KeyInfo by sign() instead, as the same X509Data/X509Certificate.
        key = getattr(self._local, "key", None)
        if key is None:
            key = xmlsec.Key.from_memory(self._pem, xmlsec.KeyFormat.PEM, None)
            self._local.key = key
        return key

    def sign(self, element: etree._Element) -> None:
        """Sign an element that has an ID, in place; the Signature follows its own Issuer."""
        element_id = element.get("ID")
        if not element_id:
            raise ValueError("only elements with an ID can be signed")
        signature = xmlsec.template.create(
            element, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256, ns="ds"
        )
        issuer = element.find(f"{{{SAML}}}Issuer")
        if issuer is not None and issuer.getparent() is element:
            issuer.addnext(signature)
        else:
            element.insert(0, signature)
        reference = xmlsec.template.add_reference(
            signature, xmlsec.Transform.SHA256, uri="#" + element_id
        )
        xmlsec.template.add_transform(reference, xmlsec.Transform.ENVELOPED)
        xmlsec.template.add_transform(reference, xmlsec.Transform.EXCL_C14N)
        key_info = xmlsec.template.ensure_key_info(signature)
        x509_data = xmlsec.template.add_x509_data(key_info)
        etree.SubElement(x509_data, f"{{{DSIG}}}X509Certificate").text = self._certificate_b64
        digest, value = id_registration.run(self._signed_values, element)
        _child(signature, "DigestValue").text = digest
        _child(signature, "SignatureValue").text = value

    def _signed_values(self, element: etree._Element) -> tuple[str, str]:
        """Sign a copy made on this thread; the DigestValue and SignatureValue it got."""
        copy = deepcopy(element)
        xmlsec.tree.add_ids(copy, ["ID"])
        signature = copy.find(f"{{{DSIG}}}Signature")
        context = xmlsec.SignatureContext()
        context.key = self._xmlsec_key()
        context.sign(signature)
        digest = _child(signature, "DigestValue").text or ""
        value = _child(signature, "SignatureValue").text or ""
        return digest, value

    def sign_query(self, query: str) -> str:
        """Base64 RSA-SHA256 signature of a Redirect-binding query (SAMLRequest=..&SigAlg=..)."""
        raw = OneLogin_Saml2_Utils.sign_binary(
            query.encode("ascii"), self._pem.decode("ascii"), xmlsec.Transform.RSA_SHA256
        )
        return base64.b64encode(raw).decode("ascii")


@lru_cache(maxsize=8)
def signer_for(key: SigningKey) -> Signer:
    """The Signer of a key, kept for the life of the process (keys are immutable)."""
    return Signer(key)


# --------------------------------------------------------------------------------------------
# Verification


def _single(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.findall(f"{{{DSIG}}}{tag}")
    if len(found) != 1:
        raise SignatureError(f"expected exactly one ds:{tag}")
    return found[0]


def check_signature_profile(root: etree._Element, allow_sha1: bool) -> etree._Element:
    """Return root's one Signature if its shape is the SAML profile's; raise SignatureError."""
    signatures = list(root.iter(f"{{{DSIG}}}Signature"))
    if len(signatures) != 1:
        raise SignatureError("expected exactly one signature in the message")
    signature = signatures[0]
    if signature.getparent() is not root:
        raise SignatureError("the signature does not sign the message itself")
    ids = [element.get("ID") for element in root.iter() if element.get("ID") is not None]
    if len(ids) != len(set(ids)):
        raise SignatureError("duplicate ID attributes")
    root_id = root.get("ID")
    if not root_id:
        raise SignatureError("the signed element has no ID")
    signed_info = _single(signature, "SignedInfo")
    c14n = _single(signed_info, "CanonicalizationMethod").get("Algorithm")
    if c14n != EXC_C14N:
        raise SignatureError("canonicalization must be exclusive C14N")
    method = _single(signed_info, "SignatureMethod").get("Algorithm")
    if method not in signature_algorithms(allow_sha1):
        raise SignatureError(f"signature algorithm {method} is not accepted")
    reference = _single(signed_info, "Reference")
    if reference.get("URI") != "#" + root_id:
        raise SignatureError("the reference does not point at the signed element")
    transforms = reference.find(f"{{{DSIG}}}Transforms")
    algorithms = (
        [t.get("Algorithm") for t in transforms.findall(f"{{{DSIG}}}Transform")]
        if transforms is not None
        else []
    )
    if ENVELOPED not in algorithms or not set(algorithms) <= ALLOWED_TRANSFORMS:
        raise SignatureError("only enveloped-signature and exclusive C14N transforms are allowed")
    if transforms is not None and len(transforms) != len(algorithms):
        raise SignatureError("unexpected content in Transforms")
    digest = _single(reference, "DigestMethod").get("Algorithm")
    if digest not in digest_algorithms(allow_sha1):
        raise SignatureError(f"digest algorithm {digest} is not accepted")
    return signature


def verify_enveloped(
    root: etree._Element, certificates: Sequence[str], allow_sha1: bool = False
) -> None:
    """Verify root's enveloped signature with one of the peer's registered certificates."""
    if not certificates:
        raise SignatureError("no certificate is registered to verify this peer's signatures")
    check_signature_profile(root, allow_sha1)
    if not id_registration.run(_verifies, root, certificates):
        raise SignatureError("the signature does not verify with the registered certificates")


def _verifies(root: etree._Element, certificates: Sequence[str]) -> bool:
    """Verify a copy of root made on this thread with each certificate in turn."""
    copy = deepcopy(root)
    xmlsec.tree.add_ids(copy, ["ID"])
    signature = copy.find(f"{{{DSIG}}}Signature")
    return any(
        OneLogin_Saml2_Utils.validate_node_sign(
            signature, copy, pem_certificate(certificate), raise_exceptions=False
        )
        for certificate in certificates
    )


def verify_query(
    signed_query: str,
    signature_b64: str,
    algorithm: str,
    certificates: Sequence[str],
    allow_sha1: bool = False,
) -> None:
    """Verify a Redirect-binding query signature with one of the peer's certificates."""
    if algorithm not in signature_algorithms(allow_sha1):
        raise SignatureError(f"signature algorithm {algorithm} is not accepted")
    if not certificates:
        raise SignatureError("no certificate is registered to verify this peer's signatures")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise SignatureError("the Signature parameter is not Base64") from None
    for certificate in certificates:
        if OneLogin_Saml2_Utils.validate_binary_sign(
            signed_query, signature, pem_certificate(certificate), algorithm
        ):
            return
    raise SignatureError("the signature does not verify with the registered certificates")
