"""IdP metadata, `bridge rp add-saml`, and metadata refresh (signature-checked when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask, Response
from lxml import etree
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from tests.saml.conftest import SamlEnv
from tests.saml.peers import PeerServer, make_keypair
from tests.support import free_port, prepare, run_cli, write_config

MD = {"md": "urn:oasis:names:tc:SAML:2.0:metadata", "ds": "http://www.w3.org/2000/09/xmldsig#"}


def sp_metadata(entity_id: str, acs: list[tuple[str, int]], cert: str, signed_requests: bool = True,
                doctype: bool = False) -> str:
    services = "".join(
        f'<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'Location="{url}" index="{index}"/>' for url, index in acs
    )
    head = '<!DOCTYPE md:EntityDescriptor>' if doctype else ""
    return (
        f'{head}<md:EntityDescriptor xmlns:md="{MD["md"]}" xmlns:ds="{MD["ds"]}" ID="_m" '
        f'entityID="{entity_id}"><md:SPSSODescriptor AuthnRequestsSigned="'
        f'{"true" if signed_requests else "false"}" protocolSupportEnumeration='
        f'"urn:oasis:names:tc:SAML:2.0:protocol"><md:KeyDescriptor use="signing"><ds:KeyInfo>'
        f"<ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
        f'</md:KeyDescriptor><md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:'
        f'bindings:HTTP-Redirect" Location="https://sp.test/slo"/>'
        f"<md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:transient</md:NameIDFormat>"
        f"{services}</md:SPSSODescriptor></md:EntityDescriptor>"
    )


@pytest.fixture
def bridge_config(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "bridge", saml={"sign_metadata": True})
    prepare(path, {})
    return path


class MetadataServer:
    """Serves whatever metadata the test sets, like an SP's metadata URL."""

    def __init__(self) -> None:
        self.body = ""
        app = Flask("metadata")
        app.add_url_rule("/metadata", "metadata", lambda: Response(self.body, mimetype="text/xml"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metadata"
        self.server = PeerServer(app, self.port)


@pytest.fixture
def metadata_server() -> Iterator[MetadataServer]:
    server = MetadataServer()
    yield server
    server.server.stop()


def test_idp_metadata_publishes_current_and_next_keys_and_both_bindings(
    saml_env: SamlEnv,
) -> None:
    from bridge.config import load_config
    from bridge.keys import KeyRing

    ring = KeyRing.load(load_config(saml_env.bridge.config_path).keys.dir)
    expected = [ring.current("saml").certificate_der_b64(), ring.next("saml").certificate_der_b64()]
    root = etree.fromstring(saml_env.idp_metadata.encode())
    assert root.get("entityID") == saml_env.bridge.url + "/saml/metadata"
    certificates = [e.text for e in root.iterfind(".//md:KeyDescriptor//ds:X509Certificate", MD)]
    assert certificates == expected
    parsed = OneLogin_Saml2_IdPMetadataParser.parse(saml_env.idp_metadata)["idp"]
    assert parsed["x509certMulti"]["signing"] == expected
    for service in ("SingleSignOnService", "SingleLogoutService"):
        bindings = [e.get("Binding").rsplit(":", 1)[1]
                    for e in root.iterfind(f".//md:{service}", MD)]
        assert bindings == ["HTTP-Redirect", "HTTP-POST"]
    assert root.find("ds:Signature", MD) is None  # off by default


def test_signed_idp_metadata_verifies_with_python3_saml(bridge_config: Path) -> None:
    from bridge.app import create_app
    from bridge.config import load_config
    from bridge.keys import KeyRing

    app = create_app(config_path=bridge_config)
    body = app.test_client().get("/saml/metadata").data
    current = KeyRing.load(load_config(bridge_config).keys.dir).current("saml")
    assert OneLogin_Saml2_Utils.validate_metadata_sign(
        body, current.certificate_pem(), raise_exceptions=True)
    app.extensions["bridge"].store.close()


def test_add_saml_from_file_prints_and_lists(bridge_config: Path, tmp_path: Path) -> None:
    cert = make_keypair("sp").cert_b64
    path = tmp_path / "sp.xml"
    path.write_text(sp_metadata("https://payroll.example.test/sp",
                                [("https://payroll.example.test/acs", 0),
                                 ("https://payroll.example.test/acs2", 1)], cert))
    result = run_cli("rp", "add-saml", "--config", str(bridge_config), "--metadata", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "Registered SAML service provider payroll.example.test-sp:\n"
        "id: payroll.example.test-sp\n"
        "name: https://payroll.example.test/sp\n"
        "entity_id: https://payroll.example.test/sp\n"
    )
    assert "url: https://payroll.example.test/acs2\n  binding: post\n  index: 1" in result.stdout
    assert "want_authn_requests_signed: true" in result.stdout
    assert "signing_certificates: 1" in result.stdout
    listing = run_cli("rp", "list", "--config", str(bridge_config))
    assert "payroll.example.test-sp  saml   enabled  store" in listing.stdout
    again = run_cli("rp", "add-saml", "--config", str(bridge_config), "--metadata", str(path),
                    "--id", "other")
    assert again.returncode == 1
    assert "already registered as payroll.example.test-sp" in again.stderr


@pytest.mark.parametrize(("body", "message"), [
    ("<md:EntityDescriptor", "not well-formed"),
    ("DOCTYPE", "document type declaration"),
    ("NOACS", "no AssertionConsumerService"),
])
def test_add_saml_refuses_bad_metadata(
    bridge_config: Path, tmp_path: Path, body: str, message: str
) -> None:
    cert = make_keypair("sp").cert_b64
    if body == "DOCTYPE":
        body = sp_metadata("https://x.test/sp", [("https://x.test/acs", 0)], cert, doctype=True)
    elif body == "NOACS":
        body = sp_metadata("https://x.test/sp", [], cert)
    path = tmp_path / "bad.xml"
    path.write_text(body)
    result = run_cli("rp", "add-saml", "--config", str(bridge_config), "--metadata", str(path))
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_metadata_url_refresh_and_signature_check(
    bridge_config: Path, metadata_server: MetadataServer
) -> None:
    from bridge.config import load_config
    from bridge.relying_parties import RelyingPartyRegistry
    from bridge.store import open_store

    cert = make_keypair("sp").cert_b64
    entity = "https://wiki.example.test/sp"
    metadata_server.body = sp_metadata(entity, [("https://wiki.example.test/acs", 0)], cert)
    result = run_cli("rp", "add-saml", "--config", str(bridge_config),
                     "--metadata", metadata_server.url, "--id", "wiki")
    assert result.returncode == 0, result.stderr
    assert f"metadata_url: {metadata_server.url}" in result.stdout
    # The SP adds an endpoint; a refresh picks it up.
    metadata_server.body = sp_metadata(
        entity, [("https://wiki.example.test/acs", 0), ("https://wiki.example.test/new", 1)], cert)
    refreshed = run_cli("rp", "refresh-saml", "--config", str(bridge_config))
    assert refreshed.stdout == "Refreshed wiki\n", refreshed.stderr
    # Claimed in the store for the interval: a second node (or run) does not refresh again.
    assert run_cli("rp", "refresh-saml", "--config", str(bridge_config)).stdout == ""
    store = open_store(load_config(bridge_config).store)
    registry = RelyingPartyRegistry(store, [])
    assert [a.url for a in registry.get("wiki").acs] == [
        "https://wiki.example.test/acs", "https://wiki.example.test/new"]
    # With a metadata signing certificate configured, unsigned metadata is not applied.
    signer = make_keypair("federation")
    party = registry.get("wiki")
    document = store.get_document("relying-party", "wiki")
    registry.save(party.model_copy(update={"metadata_signing_certificate": signer.cert_b64}),
                  document.version)
    unsigned = run_cli("rp", "refresh-saml", "--config", str(bridge_config), "wiki")
    assert unsigned.returncode == 1
    assert "metadata signature" in unsigned.stderr
    signed = OneLogin_Saml2_Utils.add_sign(
        metadata_server.body, signer.key_pem, signer.cert_pem,
        sign_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest_algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    metadata_server.body = signed.decode() if isinstance(signed, bytes) else signed
    ok = run_cli("rp", "refresh-saml", "--config", str(bridge_config), "wiki")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "wiki is up to date\n"
    store.close()
    assert requests  # imported for parity with the other modules
