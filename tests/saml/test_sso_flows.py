"""Sign-on and single logout through the wire, as python3-saml and pysaml2 see them."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests
from lxml import etree

from tests.saml.conftest import SamlEnv
from tests.saml.conftest import bridge_sign_in as sign_in
from tests.saml.peers import Received, read_form, submit_form
from tests.support import browser_client

MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
GROUPS = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
}


def start(client: requests.Session, sp: Any, binding: str, **params: str) -> requests.Response:
    """Open the SP's login link and arrive wherever the bridge sends the browser."""
    page = client.get(sp.base + "/login", params={"binding": binding, **params})
    if binding == "post":
        page = submit_form(client, page.text)  # the SP's own form, POSTed to /saml/sso
    return page


def saml_response(page: requests.Response) -> etree._Element:
    """The SAMLResponse the bridge's auto-POST page carries."""
    _action, fields = read_form(page.text)
    return etree.fromstring(base64.b64decode(fields["SAMLResponse"]))


def deliver(client: requests.Session, page: requests.Response) -> Received:
    """POST the bridge's form to the SP's ACS and read what the SP made of it."""
    assert page.status_code == 200, page.text[:300]
    return Received.from_response(submit_form(client, page.text))


@pytest.mark.parametrize("binding", ["redirect", "post"])
@pytest.mark.parametrize("sp_name", ["onelogin", "pysaml2"])
def test_sp_initiated_sign_on(saml_env: SamlEnv, sp_name: str, binding: str) -> None:
    sp = getattr(saml_env, sp_name)
    client = browser_client()
    page = sign_in(saml_env, client, start(client, sp, binding, relay="state-1"))
    action, fields = read_form(page.text)
    assert action == sp.base + "/acs"
    csp = page.headers["Content-Security-Policy"]
    assert f"form-action {sp.base};" in csp and "script-src 'sha256-" in csp
    received = deliver(client, page)
    assert received.ok, received.errors
    assert received.name_id_format == PERSISTENT
    assert received.relay_state == "state-1"
    assert received.in_response_to and received.in_response_to.startswith(
        "ONELOGIN_" if sp_name == "onelogin" else "id-"
    )
    assert received.session_index and received.session_index.startswith("_")
    assert received.attributes == {
        MAIL: ["alice@example.test"],
        "displayName": ["Alice"],
        GROUPS: ["staff", "team-alice"],
    }


def test_response_shape_and_algorithms(saml_env: SamlEnv) -> None:
    """Assertion signed (RSA-SHA256, exclusive C14N, after Issuer), audience, bearer data."""
    client = browser_client()
    page = sign_in(saml_env, client, start(client, saml_env.onelogin, "redirect"))
    response = saml_response(page)
    (assertion,) = response.findall("saml:Assertion", NS)
    assert [etree.QName(child).localname for child in assertion] == [
        "Issuer", "Signature", "Subject", "Conditions", "AuthnStatement", "AttributeStatement",
    ]
    assert response.find("ds:Signature", NS) is None  # this SP asked for assertions only
    # KeyInfo carries the current signing certificate, the first one the metadata publishes.
    metadata = etree.fromstring(saml_env.idp_metadata.encode())
    published = metadata.findall(".//{urn:oasis:names:tc:SAML:2.0:metadata}KeyDescriptor"
                                 "[@use='signing']//ds:X509Certificate", NS)
    sent = assertion.findall("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
    assert [c.text for c in sent] == [published[0].text.strip()]
    algorithms = {e.get("Algorithm") for e in assertion.iter() if e.get("Algorithm")}
    assert algorithms == {
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/04/xmlenc#sha256",
    }
    assert assertion.findtext("saml:Conditions/saml:AudienceRestriction/saml:Audience",
                              namespaces=NS) == saml_env.onelogin.base + "/metadata"
    data = assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
    assert data.get("Recipient") == saml_env.onelogin.base + "/acs"
    assert data.get("InResponseTo") == saml_env.onelogin.last_request_id
    assert assertion.findtext("saml:AuthnStatement/saml:AuthnContext/saml:AuthnContextClassRef",
                              namespaces=NS) == (
        "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    mail = assertion.find(f"saml:AttributeStatement/saml:Attribute[@Name='{MAIL}']", NS)
    assert mail.get("FriendlyName") == "mail"
    assert mail.get("NameFormat") == "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
    deliver(client, page)


def test_encrypted_assertion_signed_response(saml_env: SamlEnv) -> None:
    """AES-256-GCM + RSA-OAEP EncryptedAssertion in a signed Response; python3-saml decrypts."""
    client = browser_client()
    page = sign_in(saml_env, client, start(client, saml_env.onelogin_encrypted, "redirect"))
    response = saml_response(page)
    assert response.find("saml:Assertion", NS) is None
    assert response.find("ds:Signature", NS) is not None
    methods = [e.get("Algorithm") for e in response.iterfind(".//xenc:EncryptionMethod", NS)]
    assert methods == ["http://www.w3.org/2009/xmlenc11#aes256-gcm",
                       "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"]
    assert b"alice@example.test" not in etree.tostring(response)
    received = deliver(client, page)
    assert received.ok, received.errors
    assert received.attributes[MAIL] == ["alice@example.test"]


def test_session_reuse_force_authn_and_pairwise_persistent_ids(saml_env: SamlEnv) -> None:
    client = browser_client()
    first = deliver(client, sign_in(saml_env, client, start(client, saml_env.onelogin, "post")))
    # Signed in: the next SP gets its response without another sign-in page.
    page = start(client, saml_env.pysaml2, "redirect")
    assert read_form(page.text)[0] == saml_env.pysaml2.base + "/acs"
    other = deliver(client, page)
    assert other.ok, other.errors
    assert other.name_id != first.name_id  # pairwise: SPs cannot correlate users
    again = deliver(client, start(client, saml_env.onelogin, "redirect"))
    assert again.name_id == first.name_id  # stable per SP
    assert again.session_index == first.session_index
    # ForceAuthn: the sign-in page again, even with a session.
    forced = start(client, saml_env.onelogin, "redirect", force="1")
    assert forced.url.startswith(saml_env.bridge.url + "/login?request=")
    assert deliver(client, sign_in(saml_env, client, forced)).ok


def test_is_passive_without_session_is_no_passive(saml_env: SamlEnv) -> None:
    client = browser_client()
    page = start(client, saml_env.onelogin, "redirect", passive="1")
    status = saml_response(page).find("samlp:Status/samlp:StatusCode/samlp:StatusCode", NS)
    assert status.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
    received = deliver(client, page)
    assert not received.ok
    assert received.errors == [
        "invalid_response",
        "The status code of the Response was not Success, was Responder -> "
        "The user is not signed in.",
    ]


def test_is_passive_with_session_signs_in(saml_env: SamlEnv) -> None:
    client = browser_client()
    assert deliver(client, sign_in(saml_env, client, start(client, saml_env.onelogin, "post"))).ok
    assert deliver(client, start(client, saml_env.onelogin, "redirect", passive="1")).ok


def test_access_denied_is_request_denied_and_hidden_from_apps(saml_env: SamlEnv) -> None:
    rules = [{"type": "require_group", "any_of": ["admins"]}]
    client = browser_client()
    sign_in(saml_env, client, client.get(saml_env.bridge.url + "/saml/apps"))
    with saml_env.changed("onelogin", release=rules):
        page = start(client, saml_env.onelogin, "redirect")
        status = saml_response(page).find("samlp:Status/samlp:StatusCode/samlp:StatusCode", NS)
        assert status.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
        assert saml_response(page).find("saml:Assertion", NS) is None
        apps = client.get(saml_env.bridge.url + "/saml/apps")
        assert "/saml/idp-initiated/onelogin" not in apps.text
        assert "/saml/idp-initiated/pysaml2" in apps.text


@pytest.mark.parametrize("sp_name", ["onelogin", "pysaml2"])
def test_idp_initiated_sign_on_from_the_apps_page(saml_env: SamlEnv, sp_name: str) -> None:
    sp = getattr(saml_env, sp_name)
    client = browser_client()
    page = sign_in(saml_env, client, client.get(saml_env.bridge.url + "/saml/apps"))
    assert page.url == saml_env.bridge.url + "/saml/apps"
    for party in ("onelogin", "encrypted", "pysaml2"):
        assert f'href="/saml/idp-initiated/{party}"' in page.text
    sp.last_request_id = None  # python3-saml accepts unsolicited responses only then
    page = client.get(saml_env.bridge.url + f"/saml/idp-initiated/{sp_name}",
                      params={"RelayState": "/welcome"})
    assert saml_response(page).find("saml:Assertion", NS).find(
        "saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS
    ).get("InResponseTo") is None
    received = deliver(client, page)
    assert received.ok, received.errors
    assert received.relay_state == "/welcome"
    assert received.in_response_to in (None, "")


def test_idp_initiated_unknown_app_is_404(saml_env: SamlEnv) -> None:
    page = browser_client().get(saml_env.bridge.url + "/saml/idp-initiated/nope")
    assert page.status_code == 404 and "SAMLResponse" not in page.text


def _pysaml2_request(sp: Any, name_id_format: str) -> str:
    request_id, info = sp.client.prepare_for_authenticate(
        binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect", nameid_format=name_id_format,
        sign=True, sigalg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    )
    sp.outstanding[request_id] = "/"
    return dict(info["headers"])["Location"]


def test_name_id_policy_email_only_when_the_sp_is_offered_it(saml_env: SamlEnv) -> None:
    client = browser_client()
    sp = saml_env.pysaml2
    # pysaml2's metadata lists only persistent, so that is all it is offered.
    page = sign_in(saml_env, client, client.get(_pysaml2_request(sp, EMAIL)))
    status = saml_response(page).find("samlp:Status/samlp:StatusCode/samlp:StatusCode", NS)
    assert status.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy"
    assert not deliver(client, page).ok
    with saml_env.changed("pysaml2", name_id_formats=["persistent", "email"]):
        received = deliver(client, client.get(_pysaml2_request(sp, EMAIL)))
    assert received.ok, received.errors
    assert (received.name_id, received.name_id_format) == ("alice@example.test", EMAIL)


# Single logout ----------------------------------------------------------------------------


def signed_in_everywhere(env: SamlEnv) -> requests.Session:
    client = browser_client()
    assert deliver(client, sign_in(env, client, start(client, env.onelogin, "redirect"))).ok
    assert deliver(client, start(client, env.pysaml2, "redirect")).ok
    assert env.onelogin.session is not None and env.pysaml2.session is not None
    return client


def test_sp_initiated_logout_reaches_every_sp(saml_env: SamlEnv) -> None:
    client = signed_in_everywhere(saml_env)
    # python3-saml starts; the bridge visits pysaml2, then answers python3-saml.
    final = client.get(saml_env.onelogin.base + "/logout")
    assert final.status_code == 200, (final.url, final.text[-600:])
    assert final.url.startswith(saml_env.onelogin.base + "/slo?SAMLResponse=")
    answer = final.json()
    assert answer["ok"] is True, answer
    assert answer["relay_state"] == "done"
    assert saml_env.pysaml2.session is None
    assert saml_env.onelogin.session is None
    # The bridge's session is gone: the next sign-on asks for a password.
    page = start(client, saml_env.onelogin, "redirect")
    assert page.url.startswith(saml_env.bridge.url + "/login?request=")


def test_pysaml2_initiated_logout(saml_env: SamlEnv) -> None:
    client = signed_in_everywhere(saml_env)
    final = client.get(saml_env.pysaml2.base + "/logout")
    assert final.url.startswith(saml_env.pysaml2.base + "/slo?SAMLResponse=")
    assert final.json()["ok"] is True
    assert saml_env.onelogin.session is None


def test_bridge_logout_propagates_to_every_sp(saml_env: SamlEnv) -> None:
    client = signed_in_everywhere(saml_env)
    confirm = client.get(saml_env.bridge.url + "/logout")
    done = client.post(saml_env.bridge.url + "/logout", data={
        "csrf_token": form_fields_csrf(confirm.text)})
    assert done.status_code == 200
    assert done.url == saml_env.bridge.url + "/logout/done"
    assert saml_env.onelogin.session is None and saml_env.pysaml2.session is None


def form_fields_csrf(page: str) -> str:
    _action, fields = read_form(page)
    return fields["csrf_token"]
