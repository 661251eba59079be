"""Apache mod_auth_mellon (Debian's, lasso underneath) as a service provider of a live bridge.

mellon is configured from the bridge's /saml/metadata and registered with the bridge from the
metadata mellon generates (`bridge rp add-saml --metadata FILE`). It protects a page that prints
what mellon hands the application; a cookie-keeping HTTP client and headless Chromium sign in.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape as xml_escape

import pytest
import requests
from lxml import etree

from tests.conftest import ALICE_PASSWORD, USERS
from tests.saml.conftest import (
    MALLORY_DISPLAY,
    MALLORY_EMAIL,
    MALLORY_PASSWORD,
    RELEASE,
    add_mallory,
    bridge_sign_in,
    register,
    set_release,
)
from tests.saml.mellon import MellonSp, mellon_view, running_mellon
from tests.saml.peers import read_form, submit_form
from tests.support import (
    LiveBridge,
    browser_client,
    launch_chromium,
    live_bridge,
    prepare,
    run_cli,
    stop,
    write_config,
)

TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
# mellon sends the whole return URL as RelayState; the bridge is configured to accept this much.
RELAY_STATE_LIMIT = 1024
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
}


@dataclass
class MellonEnv:
    """The bridge, the mellon SP registered with it, and what registering printed."""

    bridge: LiveBridge
    sp: MellonSp
    registered: str
    servers: ExitStack

    def restart_bridge(self) -> None:
        """Stop the bridge and start it again on the same config (it reloads its keys)."""
        stop(self.bridge.process)
        self.bridge = self.servers.enter_context(live_bridge(self.bridge.config_path))

    @contextmanager
    def changed(self, **changes: Any) -> Iterator[None]:
        """Change the mellon relying party's settings in the bridge for a block."""
        from bridge.config import load_config
        from bridge.relying_parties import RelyingPartyRegistry
        from bridge.store import open_store

        registry = RelyingPartyRegistry(open_store(load_config(self.bridge.config_path).store), [])
        try:
            original = registry.get("mellon")
            document = registry.store.get_document("relying-party", "mellon")
            saved = registry.save(original.model_copy(update=changes), document.version)
            try:
                yield
            finally:
                registry.save(original, saved.version)
        finally:
            registry.store.close()


@pytest.fixture(scope="module")
def mellon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MellonEnv]:
    """One bridge (gunicorn) and one Apache + mod_auth_mellon for the module."""
    workdir = tmp_path_factory.mktemp("mellon")
    config = write_config(workdir / "bridge", saml={"max_relay_state_bytes": RELAY_STATE_LIMIT})
    prepare(config, USERS)
    add_mallory(config)
    with ExitStack() as servers:
        bridge = servers.enter_context(live_bridge(config))
        idp_metadata = requests.get(bridge.url + "/saml/metadata", timeout=10)
        assert idp_metadata.status_code == 200
        sp = servers.enter_context(running_mellon(idp_metadata.text, workdir))
        registered = register(workdir, config, sp, "mellon")
        set_release(config, "mellon", RELEASE)
        yield MellonEnv(bridge, sp, registered, servers)


def redirect_message(url: str, field: str) -> tuple[etree._Element, dict[str, list[str]]]:
    """The SAML message of an HTTP-Redirect URL (inflated and parsed) and its query."""
    query = parse_qs(urlsplit(url).query)
    xml = zlib.decompress(base64.b64decode(query[field][0]), -zlib.MAX_WBITS)
    return etree.fromstring(xml), query


def hop(response: requests.Response, prefix: str) -> str:
    """The one URL in a redirect chain that starts with prefix."""
    urls = [r.headers.get("Location", "") for r in response.history] + [response.url]
    matches = [url for url in urls if url.startswith(prefix)]
    assert len(matches) == 1, urls
    return matches[0]


def signed_in(env: MellonEnv, client: requests.Session | None = None,
              user: str = "alice", password: str = ALICE_PASSWORD) -> requests.Session:
    """A client that signed in to the protected page through the bridge."""
    client = client or browser_client()
    posted = bridge_sign_in(env, client, client.get(env.sp.protected_url), user, password)
    page = submit_form(client, posted.text)
    assert page.status_code == 200 and page.url == env.sp.protected_url, (
        page.status_code, page.url, env.sp.error_log()[-1500:])
    return client


def test_bridge_registers_mellon_from_its_own_metadata(mellon: MellonEnv) -> None:
    base = mellon.sp.base
    assert mellon.registered.splitlines() == [
        "Registered SAML service provider mellon:",
        "id: mellon",
        "name: mellon app",
        f"entity_id: {base}/mellon/metadata",
        "acs:",
        f"- url: {base}/mellon/postResponse",
        "  binding: post",
        "  index: 0",
        "  default: true",
        "slo:",  # mellon also lists SOAP; the bridge keeps the front-channel binding
        f"- url: {base}/mellon/logout",
        "  binding: redirect",
        "  default: false",
        "want_authn_requests_signed: true",
        "sign_assertion: true",
        "sign_response: false",
        "name_id_formats:",
        "- transient",
        "signing_certificates: 1",
        "encryption_certificates: 1",
    ]


def test_sp_initiated_sign_on_shows_the_attributes_to_the_app(mellon: MellonEnv) -> None:
    sp, client = mellon.sp, browser_client()
    login = client.get(sp.protected_url)
    # mellon's AuthnRequest: HTTP-Redirect, signed with RSA-SHA256 in the query, as lasso made it.
    request, query = redirect_message(hop(login, mellon.bridge.url + "/saml/sso?"), "SAMLRequest")
    assert query["SigAlg"] == [RSA_SHA256] and query["Signature"]
    assert query["RelayState"] == [sp.protected_url]
    assert request.find("saml:Issuer", NS).text == sp.entity_id
    assert request.get("AssertionConsumerServiceURL") == sp.base + "/mellon/postResponse"
    assert request.find("samlp:NameIDPolicy", NS).get("Format") == TRANSIENT

    posted = bridge_sign_in(mellon, client, login)
    action, fields = read_form(posted.text)
    assert action == sp.base + "/mellon/postResponse"
    response = etree.fromstring(base64.b64decode(fields["SAMLResponse"]))
    assert response.get("InResponseTo") == request.get("ID")
    # mellon's metadata offers an encryption key: lasso must decrypt AES-256-GCM + RSA-OAEP.
    assert response.find("saml:Assertion", NS) is None
    methods = [e.get("Algorithm") for e in response.iterfind(".//xenc:EncryptionMethod", NS)]
    assert methods == ["http://www.w3.org/2009/xmlenc11#aes256-gcm",
                       "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"]

    page = client.post(action, data=fields)
    assert page.status_code == 200 and page.url == sp.protected_url, sp.error_log()[-1500:]
    seen = mellon_view(page.text)
    name_id = seen.pop("MELLON_NAME_ID")
    assert name_id.startswith("_") and len(name_id) == 33
    assert seen.pop("MELLON_ASSERTION_ID").startswith("_")
    assert seen == {
        "MELLON_mail": "alice@example.test",
        "MELLON_displayName": "Alice",
        "MELLON_groups": "staff;team-alice",
        "REMOTE_USER": name_id,
        "AUTH_TYPE": "Mellon",
    }
    # mellon's own session now serves the page without a trip to the bridge.
    again = client.get(sp.protected_url)
    assert again.history == [] and mellon_view(again.text)["MELLON_NAME_ID"] == name_id


def test_a_bridge_session_signs_in_to_mellon_without_a_password(mellon: MellonEnv) -> None:
    client = browser_client()
    apps = bridge_sign_in(mellon, client, client.get(mellon.bridge.url + "/saml/apps"))
    assert 'href="/saml/idp-initiated/mellon"' in apps.text
    posted = client.get(mellon.sp.protected_url)
    assert read_form(posted.text)[0] == mellon.sp.base + "/mellon/postResponse"
    page = submit_form(client, posted.text)
    assert page.url == mellon.sp.protected_url
    assert mellon_view(page.text)["MELLON_mail"] == "alice@example.test"


def test_a_long_protected_url_survives_as_relay_state(mellon: MellonEnv) -> None:
    """mellon puts the full return URL in RelayState, past 80 bytes once there is a query.

    This needs `saml.max_relay_state_bytes` raised (see the fixture); at the default of 80 the
    bridge answers sign-in and logout with its "RelayState is longer than 80 bytes." page.
    """
    sp, client = mellon.sp, browser_client()
    url = sp.protected_url + "?report=quarterly&region=emea&year=2026&format=html&page=3"
    assert len(url.encode()) > 80
    login = client.get(url)
    assert parse_qs(urlsplit(hop(login, mellon.bridge.url + "/saml/sso?")).query)[
        "RelayState"] == [url]
    page = submit_form(client, bridge_sign_in(mellon, client, login).text)
    assert page.status_code == 200 and page.url == url, sp.error_log()[-1500:]
    assert mellon_view(page.text)["MELLON_mail"] == "alice@example.test"
    # Logout with a return URL just as long.
    done = client.get(sp.base + "/mellon/logout", params={"ReturnTo": url + "&bye=1"})
    assert done.url.startswith(mellon.bridge.url + "/login?request="), done.url  # signed out


def test_directory_values_reach_the_app_as_text(mellon: MellonEnv) -> None:
    """Markup, entities and CDATA ends in directory values stay one text value to mellon.

    mod_auth_mellon hands the application each AttributeValue's content re-serialized as XML
    (lasso_node_dump in its add_attributes), so applications see <, > and & escaped: the exact
    value is that escaping of the directory value, and no attribute was injected.
    """
    page = signed_in(mellon, user="mallory", password=MALLORY_PASSWORD).get(
        mellon.sp.protected_url)
    seen = mellon_view(page.text)
    assert seen.pop("MELLON_displayName") == xml_escape(MALLORY_DISPLAY)
    assert seen.pop("MELLON_mail") == xml_escape(MALLORY_EMAIL)
    assert seen.pop("MELLON_groups") == "staff"
    assert sorted(seen) == ["AUTH_TYPE", "MELLON_ASSERTION_ID", "MELLON_NAME_ID", "REMOTE_USER"]


@pytest.mark.parametrize(
    "signing",
    [
        {"sign_assertion": True, "sign_response": True},
        {"sign_assertion": False, "sign_response": True},
        {"sign_assertion": True, "sign_response": False, "encrypt_assertion": False},
        {"sign_assertion": False, "sign_response": True, "encrypt_assertion": False},
    ],
    ids=["both", "response", "assertion-clear", "response-clear"],
)
def test_lasso_accepts_every_signing_choice(mellon: MellonEnv, signing: dict[str, bool]) -> None:
    with mellon.changed(**signing):
        page = signed_in(mellon).get(mellon.sp.protected_url)
    assert mellon_view(page.text)["MELLON_displayName"] == "Alice"


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "clear"])
def test_mellon_refuses_an_unsigned_assertion(mellon: MellonEnv, encrypt: bool) -> None:
    """What makes the other results mean something: lasso does check the signature."""
    client, mark = browser_client(), mellon.sp.log_position()
    with mellon.changed(sign_assertion=False, sign_response=False, encrypt_assertion=encrypt):
        posted = bridge_sign_in(mellon, client, client.get(mellon.sp.protected_url))
        refused = submit_form(client, posted.text)
    assert refused.status_code == 400
    assert refused.url == mellon.sp.base + "/mellon/postResponse"
    assert "Lasso error: [101] Signature element not found." in mellon.sp.errors_since(mark)


def test_saml_error_statuses_reach_mellon(mellon: MellonEnv) -> None:
    """The bridge's signed error Responses are read by lasso (InvalidNameIDPolicy, NoPassive)."""
    client, mark = browser_client(), mellon.sp.log_position()
    with mellon.changed(name_id_formats=("persistent",)):
        posted = bridge_sign_in(mellon, client, client.get(mellon.sp.protected_url))
        refused = submit_form(client, posted.text)
    assert refused.status_code == 401
    assert (
        'StatusCode1="urn:oasis:names:tc:SAML:2.0:status:Requester", '
        'StatusCode2="urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy", '
        'StatusMessage="That NameID format is not offered."'
    ) in mellon.sp.errors_since(mark)

    # IsPassive without a bridge session: NoPassive, and no sign-in page on the way.
    client, mark = browser_client(), mellon.sp.log_position()
    posted = client.get(mellon.sp.base + "/mellon/login",
                        params={"ReturnTo": mellon.sp.protected_url, "IsPassive": "true"})
    assert read_form(posted.text)[0] == mellon.sp.base + "/mellon/postResponse"
    assert submit_form(client, posted.text).status_code == 401
    assert (
        'StatusCode1="urn:oasis:names:tc:SAML:2.0:status:Responder", '
        'StatusCode2="urn:oasis:names:tc:SAML:2.0:status:NoPassive", '
        'StatusMessage="The user is not signed in."'
    ) in mellon.sp.errors_since(mark)


def test_is_passive_with_a_bridge_session_signs_in(mellon: MellonEnv) -> None:
    client = browser_client()
    bridge_sign_in(mellon, client, client.get(mellon.bridge.url + "/saml/apps"))
    posted = client.get(mellon.sp.base + "/mellon/login",
                        params={"ReturnTo": mellon.sp.protected_url, "IsPassive": "true"})
    page = submit_form(client, posted.text)
    assert page.url == mellon.sp.protected_url
    assert mellon_view(page.text)["MELLON_mail"] == "alice@example.test"


# Single logout ----------------------------------------------------------------------------


def test_mellon_logout_ends_the_bridge_session(mellon: MellonEnv) -> None:
    sp = mellon.sp
    client = signed_in(mellon)
    name_id = mellon_view(client.get(sp.protected_url).text)["MELLON_NAME_ID"]
    mark = sp.log_position()
    done = client.get(sp.base + "/mellon/logout", params={"ReturnTo": sp.logged_out_url})
    assert done.status_code == 200 and done.url == sp.logged_out_url
    assert "Signed out" in done.text
    # mellon -> bridge: a signed LogoutRequest for the NameID it was given.
    request, query = redirect_message(hop(done, mellon.bridge.url + "/saml/slo?"), "SAMLRequest")
    assert query["SigAlg"] == [RSA_SHA256] and query["Signature"]
    assert request.find("saml:NameID", NS).text == name_id
    # bridge -> mellon: a signed Success LogoutResponse that lasso accepted (else mellon says 400).
    answer, query = redirect_message(hop(done, sp.base + "/mellon/logout?SAMLResponse="),
                                     "SAMLResponse")
    assert query["SigAlg"] == [RSA_SHA256] and query["Signature"]
    assert query["RelayState"] == [sp.logged_out_url]
    assert answer.get("InResponseTo") == request.get("ID")
    assert answer.find("samlp:Status/samlp:StatusCode", NS).get("Value") == SUCCESS
    assert sp.errors_since(mark) == ""
    # Both sessions are gone: the page sends the browser to the bridge, which asks for a password.
    again = client.get(sp.protected_url)
    assert again.url.startswith(mellon.bridge.url + "/login?request="), again.url
    apps = client.get(mellon.bridge.url + "/saml/apps")
    assert apps.url.startswith(mellon.bridge.url + "/login?request="), apps.url


def test_bridge_logout_ends_the_mellon_session(mellon: MellonEnv) -> None:
    sp = mellon.sp
    client = signed_in(mellon)
    name_id = mellon_view(client.get(sp.protected_url).text)["MELLON_NAME_ID"]
    mark = sp.log_position()
    confirm = client.get(mellon.bridge.url + "/logout")
    done = client.post(mellon.bridge.url + "/logout",
                       data={"csrf_token": read_form(confirm.text)[1]["csrf_token"]})
    assert done.status_code == 200 and done.url == mellon.bridge.url + "/logout/done"
    request, query = redirect_message(hop(done, sp.base + "/mellon/logout?SAMLRequest="),
                                      "SAMLRequest")
    assert query["SigAlg"] == [RSA_SHA256] and query["Signature"]
    assert request.find("saml:NameID", NS).text == name_id
    assert request.find("samlp:SessionIndex", NS).text.startswith("_")
    answer, _query = redirect_message(hop(done, mellon.bridge.url + "/saml/slo?SAMLResponse="),
                                      "SAMLResponse")
    assert answer.find("samlp:Status/samlp:StatusCode", NS).get("Value") == SUCCESS
    # mellon found the session by NameID and ended it (it logs when it finds none).
    assert sp.errors_since(mark) == ""
    again = client.get(sp.protected_url, allow_redirects=False)
    assert again.status_code == 303
    assert again.headers["Location"].startswith(sp.base + "/mellon/login?")


# Signing key rollover ---------------------------------------------------------------------


def signing_certificates(metadata: str) -> list[str]:
    """The IdP signing certificates a metadata document lists, in order."""
    root = etree.fromstring(metadata.encode())
    return [
        "".join(element.text.split())
        for element in root.iterfind(
            ".//md:KeyDescriptor[@use='signing']//ds:X509Certificate",
            {"md": "urn:oasis:names:tc:SAML:2.0:metadata", **NS},
        )
    ]


def test_mellon_trusts_the_next_key_it_learned_from_metadata(mellon: MellonEnv) -> None:
    """After `bridge keys rotate` the bridge signs with the key its metadata announced as next;
    mellon still holds the metadata it was configured with, and lasso accepts the new key."""
    configured = signing_certificates(mellon.sp.idp_metadata())
    assert len(configured) == 2  # current, next
    rotated = run_cli("keys", "rotate", "--config", str(mellon.bridge.config_path),
                      "--use", "saml")
    assert rotated.returncode == 0, rotated.stderr
    mellon.restart_bridge()
    now = signing_certificates(requests.get(mellon.bridge.url + "/saml/metadata", timeout=10).text)
    assert now[0] == configured[1] and configured[0] in now and len(now) == 3
    client = browser_client()
    with mellon.changed(encrypt_assertion=False):
        posted = bridge_sign_in(mellon, client, client.get(mellon.sp.protected_url))
        response = etree.fromstring(base64.b64decode(read_form(posted.text)[1]["SAMLResponse"]))
        signed_by = response.findtext("saml:Assertion/ds:Signature//ds:X509Certificate",
                                      namespaces=NS)
        assert "".join(signed_by.split()) == configured[1]
        page = submit_form(client, posted.text)
    assert page.url == mellon.sp.protected_url, mellon.sp.error_log()[-1500:]
    assert mellon_view(page.text)["MELLON_mail"] == "alice@example.test"


# A real browser ---------------------------------------------------------------------------


@pytest.mark.browser
def test_chromium_signs_in_and_out_through_mellon(mellon: MellonEnv, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    sp = mellon.sp
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(sp.protected_url)
            assert page.url.startswith(mellon.bridge.url + "/login?request=")
            page.fill("#username", "alice")
            page.fill("#password", ALICE_PASSWORD)
            page.click("button[type=submit]")
            # The bridge's auto-submitting form (its CSP allows only mellon's origin) posts on.
            page.wait_for_url(sp.protected_url)
            seen = mellon_view(page.content())
            assert seen["MELLON_mail"] == "alice@example.test"
            assert seen["MELLON_groups"] == "staff;team-alice"
            page.screenshot(path=str(tmp_path / "mellon-protected.png"), full_page=True)
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["mellon-cookie"]["domain"] == "127.0.0.1"
            assert cookies["bridge_session"]["domain"] == "localhost"

            page.goto(sp.base + "/mellon/logout?ReturnTo=" + sp.logged_out_url)
            assert page.url == sp.logged_out_url
            assert page.inner_text("#done") == "Signed out"
            names = {c["name"] for c in page.context.cookies()}
            assert "bridge_session" not in names
            page.goto(sp.protected_url)
            assert page.url.startswith(mellon.bridge.url + "/login?request=")
        finally:
            browser.close()
