"""Hostile input at /saml/sso and /saml/slo: items S01-S11 of the security checklist.

Requests are crafted here and signed with python3-saml's own `add_sign` / `sign_binary` using
the registered SP's key (or an attacker's), then sent over HTTP to the live bridge. A refusal
is an error page at the bridge with no SAMLResponse form: nothing is POSTed anywhere.
"""

from __future__ import annotations

import base64
import copy
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from tests.saml.conftest import MALLORY_DISPLAY, MALLORY_EMAIL, MALLORY_PASSWORD, SamlEnv
from tests.saml.peers import KeyPair, make_keypair, read_form, submit_form
from tests.saml.test_sso_flows import NS, deliver, saml_response, sign_in, start
from tests.support import browser_client

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
_counter = iter(range(10**6))


def instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def authn_request(env: SamlEnv, *, sp: Any = None, issuer: str | None = None,
                  acs: str | None = "default", index: int | None = None,
                  destination: str | None = "default", issued: datetime | None = None,
                  request_id: str | None = None) -> etree._Element:
    """An AuthnRequest from a registered SP (defaults), built with lxml."""
    sp = sp or env.onelogin
    root = etree.Element(f"{{{SAMLP}}}AuthnRequest", nsmap={"samlp": SAMLP, "saml": SAML})
    root.set("ID", request_id or f"_hostile{next(_counter)}x{datetime.now().timestamp():.0f}")
    root.set("Version", "2.0")
    root.set("IssueInstant", instant(issued or datetime.now(UTC)))
    if destination is not None:
        root.set("Destination", env.bridge.url + "/saml/sso" if destination == "default"
                 else destination)
    if index is not None:
        root.set("AssertionConsumerServiceIndex", str(index))
    elif acs is not None:
        root.set("AssertionConsumerServiceURL", sp.base + "/acs" if acs == "default" else acs)
    root.set("ProtocolBinding", "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST")
    etree.SubElement(root, f"{{{SAML}}}Issuer").text = issuer or sp.base + "/metadata"
    return root


def signed(root: etree._Element, keys: KeyPair, algorithm: str = RSA_SHA256,
           digest: str = SHA256) -> bytes:
    """Enveloped signature by python3-saml's add_sign."""
    xml = OneLogin_Saml2_Utils.add_sign(etree.tostring(root), keys.key_pem, keys.cert_pem,
                                        sign_algorithm=algorithm, digest_algorithm=digest)
    return xml if isinstance(xml, bytes) else xml.encode()


def post(env: SamlEnv, xml: bytes, relay_state: str | None = None,
         client: requests.Session | None = None, path: str = "/saml/sso") -> requests.Response:
    """HTTP-POST binding; follows the bridge's own GET hop."""
    data = {"SAMLRequest": base64.b64encode(xml).decode()}
    if relay_state is not None:
        data["RelayState"] = relay_state
    return (client or browser_client()).post(env.bridge.url + path, data=data)


def redirect_query(xml: bytes, keys: KeyPair | None, algorithm: str = RSA_SHA256,
                   relay_state: str | None = None, field: str = "SAMLRequest") -> str:
    """HTTP-Redirect binding query, signed with python3-saml's sign_binary."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    value = base64.b64encode(compressor.compress(xml) + compressor.flush()).decode()
    query = f"{field}={quote(value, safe='')}"
    if relay_state is not None:
        query += f"&RelayState={quote(relay_state, safe='')}"
    if keys is not None:
        from onelogin.saml2.constants import OneLogin_Saml2_Constants as C

        transform = {RSA_SHA256: C.RSA_SHA256, RSA_SHA1: C.RSA_SHA1}[algorithm]
        query += f"&SigAlg={quote(algorithm, safe='')}"
        import xmlsec

        signature = OneLogin_Saml2_Utils.sign_binary(
            query, keys.key_pem,
            xmlsec.Transform.RSA_SHA256 if transform == C.RSA_SHA256 else xmlsec.Transform.RSA_SHA1,
        )
        query += f"&Signature={quote(base64.b64encode(signature).decode(), safe='')}"
    return query


def get(env: SamlEnv, query: str, client: requests.Session | None = None,
        path: str = "/saml/sso") -> requests.Response:
    return (client or browser_client()).get(env.bridge.url + path + "?" + query)


def refused(response: requests.Response, status: int = 400, text: str | None = None) -> None:
    """An error page at the bridge; no SAML message is sent anywhere."""
    assert response.status_code == status, (response.status_code, response.text[-400:])
    assert "SAMLResponse" not in response.text and "<form" not in response.text
    assert response.url.startswith(response.url.split("/saml/")[0] + "/saml/")
    if text is not None:
        assert text in response.text, response.text[-400:]


def accepted(env: SamlEnv, response: requests.Response) -> None:
    """The request was good: the browser is sent to sign in."""
    assert response.status_code == 200, response.text[-400:]
    assert response.url.startswith(env.bridge.url + "/login?request="), response.url


# S01 signature wrapping --------------------------------------------------------------------


def _xsw_shapes(env: SamlEnv) -> dict[str, bytes]:
    keys = env.keys["onelogin"]
    good = etree.fromstring(signed(authn_request(env), keys))
    evil_acs = "https://attacker.test/acs"
    shapes: dict[str, bytes] = {}

    # 1: evil root, the signed original hidden in Extensions (reference points inside).
    evil = authn_request(env, acs=evil_acs)
    extensions = etree.SubElement(evil, f"{{{SAMLP}}}Extensions")
    extensions.append(copy.deepcopy(good))
    evil.insert(1, copy.deepcopy(good.find("ds:Signature", NS)))
    shapes["wrapped-original"] = etree.tostring(evil)
    # 2: same with the evil root copying the signed ID (duplicate IDs).
    evil2 = copy.deepcopy(evil)
    evil2.set("ID", good.get("ID"))
    shapes["duplicate-id"] = etree.tostring(evil2)
    # 3: signature moved into a child element (does not sign the message itself).
    evil3 = authn_request(env, acs=evil_acs)
    evil3.set("ID", good.get("ID"))
    holder = etree.SubElement(evil3, f"{{{SAMLP}}}Extensions")
    holder.append(copy.deepcopy(good.find("ds:Signature", NS)))
    shapes["signature-in-child"] = etree.tostring(evil3)
    # 4: two signatures.
    twice = copy.deepcopy(good)
    twice.insert(2, copy.deepcopy(good.find("ds:Signature", NS)))
    shapes["two-signatures"] = etree.tostring(twice)
    # 5: the ACS changed after signing (digest mismatch).
    tampered = copy.deepcopy(good)
    tampered.set("AssertionConsumerServiceURL", evil_acs)
    shapes["tampered"] = etree.tostring(tampered)
    # 6: a reference to the whole document instead of the ID.
    whole = copy.deepcopy(good)
    whole.find("ds:Signature/ds:SignedInfo/ds:Reference", NS).set("URI", "")
    shapes["empty-reference"] = etree.tostring(whole)
    # 7: an extra XPath transform.
    xpath = copy.deepcopy(good)
    transforms = xpath.find("ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms", NS)
    etree.SubElement(transforms, f"{{{NS['ds']}}}Transform",
                     Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116")
    shapes["xpath-transform"] = etree.tostring(xpath)
    # 8: evil sibling after the signed root inside a wrapper document is not XML we accept:
    # an evil Issuer added next to the signed one.
    issuer = copy.deepcopy(good)
    extra = etree.Element(f"{{{SAML}}}Issuer")
    extra.text = "https://attacker.test/metadata"
    issuer.insert(0, extra)
    shapes["second-issuer"] = etree.tostring(issuer)
    return shapes


SHAPES = ["wrapped-original", "duplicate-id", "signature-in-child", "two-signatures",
          "tampered", "empty-reference", "xpath-transform", "second-issuer"]


@pytest.mark.parametrize("shape", SHAPES)
def test_S01_signature_wrapping_is_refused(saml_env: SamlEnv, shape: str) -> None:
    refused(post(saml_env, _xsw_shapes(saml_env)[shape]))


def test_S01_the_unwrapped_signed_request_is_accepted(saml_env: SamlEnv) -> None:
    accepted(saml_env, post(saml_env, signed(authn_request(saml_env), saml_env.keys["onelogin"])))


# S02 DTDs and entities ----------------------------------------------------------------------

DTD_PAYLOADS = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
                      b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                      b'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">'
                      b'&b;</samlp:AuthnRequest>',
    "xxe": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;'
           b'</samlp:AuthnRequest>',
    "bare-doctype": b'<!DOCTYPE samlp:AuthnRequest><samlp:AuthnRequest '
                    b'xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"/>',
}


@pytest.mark.parametrize("payload", sorted(DTD_PAYLOADS))
@pytest.mark.parametrize("binding", ["post", "redirect"])
def test_S02_any_doctype_is_refused(saml_env: SamlEnv, payload: str, binding: str) -> None:
    xml = DTD_PAYLOADS[payload]
    answer = post(saml_env, xml) if binding == "post" else get(saml_env, redirect_query(xml, None))
    refused(answer, text="document type declaration is not accepted")
    assert "root:" not in answer.text


def test_S02_malformed_xml_is_a_page_not_a_500(saml_env: SamlEnv) -> None:
    refused(post(saml_env, b"<samlp:AuthnRequest"), text="not well-formed")
    refused(post(saml_env, b"\x00\xff garbage"), text="not well-formed")
    refused(get(saml_env, "SAMLRequest=%%%"), text="not valid Base64")
    refused(get(saml_env, "SAMLRequest=" + quote(base64.b64encode(b"not deflate").decode())))
    refused(post(saml_env, b'<x xmlns="urn:other"/>'), text="Expected a SAML AuthnRequest")


# S03/S04 what the bridge signs ------------------------------------------------------------


@pytest.mark.parametrize("sp_name", ["onelogin", "pysaml2"])
def test_S03_S04_directory_values_stay_text_of_one_attribute_value(
    saml_env: SamlEnv, sp_name: str
) -> None:
    client = browser_client()
    sp = getattr(saml_env, sp_name)
    page = sign_in(saml_env, client, start(client, sp, "redirect"), "mallory", MALLORY_PASSWORD)
    response = saml_response(page)
    values = response.findall(".//saml:Attribute[@Name='displayName']/saml:AttributeValue", NS)
    assert [v.text for v in values] == [MALLORY_DISPLAY]
    assert response.find(".//saml:Attribute[@Name='role']", NS) is None
    received = deliver(client, page)
    assert received.ok, received.errors
    assert received.attributes["displayName"] == [MALLORY_DISPLAY]
    assert received.attributes["urn:oid:0.9.2342.19200300.100.1.3"] == [MALLORY_EMAIL]
    assert "role" not in received.attributes


def test_S03_control_characters_are_refused_not_a_500(saml_env: SamlEnv) -> None:
    rules = [{"type": "constant", "name": "note", "values": ["bell\x07"]}]
    client = browser_client()
    with saml_env.changed("onelogin", release=rules):
        page = sign_in(saml_env, client, start(client, saml_env.onelogin, "redirect"))
        status = saml_response(page).find("samlp:Status/samlp:StatusCode", NS)
        assert status.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:Responder"
        assert saml_response(page).find("saml:Assertion", NS) is None


def test_S04_comment_inside_issuer_is_refused(saml_env: SamlEnv) -> None:
    root = authn_request(saml_env)
    xml = etree.tostring(root).replace(b"127.0.0.1", b"127.0.<!-- x -->0.1", 1)
    assert b"<!-- x -->" in xml and b"<saml:Issuer>" in xml
    refused(post(saml_env, xml))


# S05 missing, wrong-key and embedded-key signatures ----------------------------------------


def test_S05_unsigned_request_is_refused_when_signing_is_required(saml_env: SamlEnv) -> None:
    xml = etree.tostring(authn_request(saml_env))
    refused(post(saml_env, xml), text="must sign its requests")
    refused(get(saml_env, redirect_query(xml, None)), text="must sign its requests")


def test_S05_signature_by_another_key_is_refused(saml_env: SamlEnv) -> None:
    attacker = make_keypair("attacker")
    root = authn_request(saml_env)
    # add_sign embeds the attacker's certificate in KeyInfo; it must not be trusted.
    refused(post(saml_env, signed(root, attacker)), text="does not verify")
    refused(get(saml_env, redirect_query(etree.tostring(authn_request(saml_env)), attacker)),
            text="does not verify")
    # Another registered SP's key does not sign for this one either.
    refused(post(saml_env, signed(authn_request(saml_env), saml_env.keys["pysaml2"])))


def test_S05_hmac_signature_is_refused(saml_env: SamlEnv) -> None:
    good = etree.fromstring(signed(authn_request(saml_env), saml_env.keys["onelogin"]))
    good.find("ds:Signature/ds:SignedInfo/ds:SignatureMethod", NS).set(
        "Algorithm", "http://www.w3.org/2000/09/xmldsig#hmac-sha1")
    refused(post(saml_env, etree.tostring(good)), text="is not accepted")


def test_S05_redirect_signature_over_another_query_is_refused(saml_env: SamlEnv) -> None:
    query = redirect_query(etree.tostring(authn_request(saml_env)), saml_env.keys["onelogin"],
                           relay_state="a")
    refused(get(saml_env, query.replace("RelayState=a", "RelayState=b")), text="does not verify")


# S06 SHA-1 --------------------------------------------------------------------------------


def test_S06_sha1_signatures_are_refused_by_default(saml_env: SamlEnv) -> None:
    keys = saml_env.keys["onelogin"]
    refused(post(saml_env, signed(authn_request(saml_env), keys, RSA_SHA1, SHA1)),
            text="rsa-sha1 is not accepted")
    refused(post(saml_env, signed(authn_request(saml_env), keys, RSA_SHA256, SHA1)),
            text="sha1 is not accepted")
    refused(get(saml_env, redirect_query(etree.tostring(authn_request(saml_env)), keys,
                                         RSA_SHA1)), text="rsa-sha1 is not accepted")


def test_S06_sha1_only_where_the_sp_is_allowed_it(saml_env: SamlEnv) -> None:
    keys = saml_env.keys["onelogin"]
    with saml_env.changed("onelogin", allow_sha1=True):
        accepted(saml_env, post(saml_env, signed(authn_request(saml_env), keys, RSA_SHA1, SHA1)))
        accepted(saml_env, get(saml_env, redirect_query(
            etree.tostring(authn_request(saml_env)), keys, RSA_SHA1)))


def test_S06_the_bridge_never_produces_sha1(saml_env: SamlEnv) -> None:
    client = browser_client()
    with saml_env.changed("onelogin", allow_sha1=True, sign_response=True):
        page = sign_in(saml_env, client, start(client, saml_env.onelogin, "redirect"))
    text = etree.tostring(saml_response(page))
    assert b"sha1" not in text and text.count(b"rsa-sha256") == 2


# S07 ACS not registered -----------------------------------------------------------------


@pytest.mark.parametrize("acs", [
    "https://attacker.test/acs",
    "{base}/acs/",
    "{base}/ACS",
    "{base}/acs?x=1",
    "{base}/acs#f",
    "{base_other_port}/acs",
    "{base}@attacker.test/acs",
])
def test_S07_unregistered_acs_url_is_an_error_page_even_when_signed(
    saml_env: SamlEnv, acs: str
) -> None:
    base = saml_env.onelogin.base
    url = acs.format(base=base, base_other_port=base.rsplit(":", 1)[0] + ":1")
    root = authn_request(saml_env, acs=url)
    refused(post(saml_env, signed(root, saml_env.keys["onelogin"])), text="not registered")


def test_S07_unregistered_acs_index(saml_env: SamlEnv) -> None:
    keys = saml_env.keys["onelogin"]
    refused(post(saml_env, signed(authn_request(saml_env, index=7), keys)), text="not registered")
    accepted(saml_env, post(saml_env, signed(authn_request(saml_env, index=1), keys)))


def test_S07_several_acs_endpoints_by_index_and_url(saml_env: SamlEnv) -> None:
    acs = [
        {"url": saml_env.onelogin.base + "/acs", "index": 1, "default": True},
        {"url": saml_env.onelogin.base + "/acs-two", "index": 2},
    ]
    keys = saml_env.keys["onelogin"]
    with saml_env.changed("onelogin", acs=acs):
        client = browser_client()
        page = sign_in(saml_env, client, post(
            saml_env, signed(authn_request(saml_env, index=2), keys), client=client))
        assert read_form(page.text)[0] == saml_env.onelogin.base + "/acs-two"
        page = post(saml_env, signed(authn_request(
            saml_env, acs=saml_env.onelogin.base + "/acs-two"), keys), client=client)
        assert read_form(page.text)[0] == saml_env.onelogin.base + "/acs-two"
        page = post(saml_env, signed(authn_request(saml_env, acs=None), keys), client=client)
        assert read_form(page.text)[0] == saml_env.onelogin.base + "/acs"


# S08 unknown SP, destination, time, replay ---------------------------------------------------


def test_S08_unknown_sp_is_refused(saml_env: SamlEnv) -> None:
    root = authn_request(saml_env, issuer="https://unknown.test/metadata")
    refused(post(saml_env, signed(root, saml_env.keys["onelogin"])), 403, "not registered")


def test_S08_wrong_destination_is_refused(saml_env: SamlEnv) -> None:
    keys = saml_env.keys["onelogin"]
    for destination in ("https://other-idp.test/sso", saml_env.bridge.url + "/saml/slo"):
        root = authn_request(saml_env, destination=destination)
        refused(post(saml_env, signed(root, keys)), text="another destination")
    # Signed requests must name their Destination.
    refused(post(saml_env, signed(authn_request(saml_env, destination=None), keys)),
            text="must name its Destination")


@pytest.mark.parametrize("offset", [-400, -200, 200, 3600])
def test_S08_issue_instant_outside_skew_is_refused(saml_env: SamlEnv, offset: int) -> None:
    issued = datetime.now(UTC) + timedelta(seconds=offset)
    root = authn_request(saml_env, issued=issued)
    refused(post(saml_env, signed(root, saml_env.keys["onelogin"])), text="too long ago")


def test_S08_issue_instant_within_skew_is_accepted(saml_env: SamlEnv) -> None:
    root = authn_request(saml_env, issued=datetime.now(UTC) - timedelta(seconds=120))
    accepted(saml_env, post(saml_env, signed(root, saml_env.keys["onelogin"])))


def test_S08_replayed_request_id_is_refused_on_any_worker(saml_env: SamlEnv) -> None:
    xml = signed(authn_request(saml_env), saml_env.keys["onelogin"])
    accepted(saml_env, post(saml_env, xml))
    # Several tries, so both gunicorn workers see it: the cache is the store, not memory.
    for _ in range(4):
        refused(post(saml_env, xml), text="already been used")


# S09 RelayState -------------------------------------------------------------------------------


def test_S09_relay_state_over_80_bytes_is_refused(saml_env: SamlEnv) -> None:
    xml = signed(authn_request(saml_env), saml_env.keys["onelogin"])
    refused(post(saml_env, xml, relay_state="é" * 41), text="longer than 80 bytes")
    refused(get(saml_env, redirect_query(etree.tostring(authn_request(saml_env)),
                                         saml_env.keys["onelogin"], relay_state="x" * 81)))


def test_S09_relay_state_is_echoed_verbatim_and_never_followed(saml_env: SamlEnv) -> None:
    relay = 'https://attacker.test/?a=1&b="<x>"'
    assert len(relay.encode()) <= 80
    client = browser_client()
    page = sign_in(saml_env, client, post(
        saml_env, signed(authn_request(saml_env), saml_env.keys["onelogin"]), relay, client))
    action, fields = read_form(page.text)
    assert action == saml_env.onelogin.base + "/acs"
    assert fields["RelayState"] == relay
    assert "attacker.test" not in page.headers.get("Location", "")


# S10: what a strict SP checks is present in every response -----------------------------------


def test_S10_responses_carry_what_a_strict_sp_compares(saml_env: SamlEnv) -> None:
    """S10 is the bridge as SP of upstream IdPs (not part of this issue); the IdP side gives a
    strict SP everything S10 asks it to compare, with bounded validity."""
    client = browser_client()
    page = sign_in(saml_env, client, start(client, saml_env.onelogin, "redirect"))
    response = saml_response(page)
    assertion = response.find("saml:Assertion", NS)
    acs = saml_env.onelogin.base + "/acs"
    assert response.get("Destination") == acs
    assert response.get("InResponseTo") == saml_env.onelogin.last_request_id
    data = assertion.find(".//saml:SubjectConfirmationData", NS)
    assert (data.get("Recipient"), data.get("InResponseTo")) == (acs, response.get("InResponseTo"))
    conditions = assertion.find("saml:Conditions", NS)
    start_at = datetime.fromisoformat(conditions.get("NotBefore").replace("Z", "+00:00"))
    end_at = datetime.fromisoformat(conditions.get("NotOnOrAfter").replace("Z", "+00:00"))
    assert end_at - start_at == timedelta(seconds=300)
    ids = [e.get("ID") for e in response.iter() if e.get("ID")]
    assert len(ids) == len(set(ids)) == 2


# S11 oversized messages ------------------------------------------------------------------------


def test_S11_deflate_bomb_is_413(saml_env: SamlEnv) -> None:
    bomb = b"<samlp:AuthnRequest xmlns:samlp='urn:oasis:names:tc:SAML:2.0:protocol'>" + (
        b" " * (4 * 1024 * 1024))
    query = redirect_query(bomb, None)
    assert len(query) < 8000  # 4 MiB inflated from a URL that fits gunicorn's request line
    refused(get(saml_env, query), 413, "too large")


def test_S11_over_256_kib_after_decoding_is_413(saml_env: SamlEnv) -> None:
    big = etree.tostring(authn_request(saml_env)).replace(
        b"</samlp:AuthnRequest>", b"<!--" + b"x" * (257 * 1024) + b"--></samlp:AuthnRequest>")
    refused(post(saml_env, big), 413, "too large")
    refused(get(saml_env, redirect_query(big, None)), 413, "too large")


def test_S11_just_under_the_limit_is_parsed(saml_env: SamlEnv) -> None:
    root = authn_request(saml_env)
    padded = etree.tostring(root).replace(
        b"</samlp:AuthnRequest>", b"<!--" + b"x" * (200 * 1024) + b"--></samlp:AuthnRequest>")
    refused(post(saml_env, padded), text="must sign its requests")  # parsed, then judged


# RequestedAuthnContext ------------------------------------------------------------------


def _with_context(root: etree._Element, comparison: str, *classes: str) -> etree._Element:
    requested = etree.SubElement(root, f"{{{SAMLP}}}RequestedAuthnContext", Comparison=comparison)
    for item in classes:
        etree.SubElement(requested, f"{{{SAML}}}AuthnContextClassRef").text = item
    return root


AC = "urn:oasis:names:tc:SAML:2.0:ac:classes:"


@pytest.mark.parametrize(("comparison", "classes", "met"), [
    ("exact", ("Smartcard",), False),
    ("exact", ("PasswordProtectedTransport",), True),
    ("minimum", ("Password",), True),
    ("minimum", ("Smartcard", "MobileTwoFactorContract"), False),
    ("better", ("PasswordProtectedTransport",), False),
    ("maximum", ("PasswordProtectedTransport",), True),
])
def test_requested_authn_context(
    saml_env: SamlEnv, comparison: str, classes: tuple[str, ...], met: bool
) -> None:
    root = _with_context(authn_request(saml_env), comparison, *(AC + c for c in classes))
    client = browser_client()
    page = sign_in(saml_env, client, post(
        saml_env, signed(root, saml_env.keys["onelogin"]), client=client))
    response = saml_response(page)
    if met:
        assert response.find("saml:Assertion", NS) is not None
    else:
        status = response.find("samlp:Status/samlp:StatusCode/samlp:StatusCode", NS)
        assert status.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext"
        assert response.find("saml:Assertion", NS) is None


# Logout requests -----------------------------------------------------------------------------


def test_unsigned_logout_request_is_refused(saml_env: SamlEnv) -> None:
    root = etree.Element(f"{{{SAMLP}}}LogoutRequest", nsmap={"samlp": SAMLP, "saml": SAML})
    root.set("ID", "_logout-unsigned")
    root.set("Version", "2.0")
    root.set("IssueInstant", instant(datetime.now(UTC)))
    root.set("Destination", saml_env.bridge.url + "/saml/slo")
    etree.SubElement(root, f"{{{SAML}}}Issuer").text = saml_env.onelogin.base + "/metadata"
    etree.SubElement(root, f"{{{SAML}}}NameID").text = "someone"
    refused(get(saml_env, redirect_query(etree.tostring(root), None), path="/saml/slo"),
            text="must sign its requests")


def test_logout_response_for_no_logout_in_progress_is_a_page(saml_env: SamlEnv) -> None:
    root = etree.Element(f"{{{SAMLP}}}LogoutResponse", nsmap={"samlp": SAMLP, "saml": SAML})
    root.set("ID", "_lr")
    root.set("Version", "2.0")
    root.set("IssueInstant", instant(datetime.now(UTC)))
    root.set("InResponseTo", "_guess")
    root.set("Destination", saml_env.bridge.url + "/saml/slo")
    etree.SubElement(root, f"{{{SAML}}}Issuer").text = saml_env.onelogin.base + "/metadata"
    status = etree.SubElement(etree.SubElement(root, f"{{{SAMLP}}}Status"),
                              f"{{{SAMLP}}}StatusCode")
    status.set("Value", "urn:oasis:names:tc:SAML:2.0:status:Success")
    query = redirect_query(etree.tostring(root), saml_env.keys["onelogin"],
                           relay_state="nope", field="SAMLResponse")
    refused(get(saml_env, query, path="/saml/slo"), text="not in progress")


def test_post_binding_hop_is_single_use(saml_env: SamlEnv) -> None:
    client = browser_client()
    answer = client.post(saml_env.bridge.url + "/saml/sso", allow_redirects=False, data={
        "SAMLRequest": base64.b64encode(
            signed(authn_request(saml_env), saml_env.keys["onelogin"])).decode()})
    assert answer.status_code == 303
    hop = answer.headers["Location"]
    accepted(saml_env, client.get(saml_env.bridge.url + hop if hop.startswith("/") else hop))
    again = client.get(saml_env.bridge.url + hop if hop.startswith("/") else hop)
    refused(again, text="expired")
    assert submit_form  # the helper module stays imported for other tests
