"""Independent SAML service providers over HTTP: python3-saml (OneLogin) and pysaml2.

Each runs as a small web app on loopback; its SAML work is done by the library's own code from
the bridge's published metadata, with strict settings. The tests play the browser between them.
"""

from __future__ import annotations

import base64
import html
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask, Response, jsonify, redirect
from flask import request as flask_request
from werkzeug.serving import make_server

from tests.support import free_port


@dataclass
class KeyPair:
    """An RSA key and self-signed certificate made at test time (never committed)."""

    key_pem: str
    cert_pem: str

    @property
    def cert_b64(self) -> str:
        """The certificate as one line of Base64 DER."""
        return "".join(line for line in self.cert_pem.splitlines() if "-----" not in line)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write key (0600) and certificate files for peers that want paths."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
        key_path.write_text(self.key_pem)
        key_path.chmod(0o600)
        cert_path.write_text(self.cert_pem)
        return key_path, cert_path


def make_keypair(common_name: str, bits: int = 2048) -> KeyPair:
    """Generate an RSA key pair with a self-signed certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.forms.append({"action": values.get("action"), "method": values.get("method"),
                               "fields": {}})
        elif tag == "input" and self.forms and values.get("name"):
            self.forms[-1]["fields"][values["name"]] = values.get("value") or ""


def read_form(page: str) -> tuple[str, dict[str, str]]:
    """The first form of a page: its action and its hidden fields (entities decoded)."""
    parser = _Forms()
    parser.feed(page)
    assert parser.forms, "the page has no form"
    form = parser.forms[0]
    return html.unescape(form["action"] or ""), form["fields"]


def submit_form(client: requests.Session, page: str) -> requests.Response:
    """Do what the auto-submit script does: POST the form's fields to its action."""
    action, fields = read_form(page)
    return client.post(action, data=fields)


class PeerServer:
    """A Flask app served by werkzeug on 127.0.0.1 in a background thread."""

    def __init__(self, app: Flask, port: int):
        self.port = port
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.thread.join(timeout=10)


@dataclass
class Received:
    """What an SP accepted (or the errors it reported), as its own code read it."""

    ok: bool
    errors: list[str] = field(default_factory=list)
    name_id: str | None = None
    name_id_format: str | None = None
    session_index: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    relay_state: str | None = None
    in_response_to: str | None = None

    @classmethod
    def from_response(cls, response: requests.Response) -> Received:
        """Parse the SP's JSON answer."""
        return cls(**response.json())


# python3-saml ---------------------------------------------------------------------------------


class OneLoginSp:
    """A python3-saml service provider with strict settings."""

    name = "onelogin"

    def __init__(
        self,
        idp_metadata: str,
        keys: KeyPair,
        *,
        encrypted: bool = False,
        sign_requests: bool = True,
        want_messages_signed: bool = False,
    ):
        from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.keys = keys
        idp = OneLogin_Saml2_IdPMetadataParser.parse(idp_metadata)
        self.settings: dict[str, Any] = {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": self.base + "/metadata",
                "assertionConsumerService": {
                    "url": self.base + "/acs",
                    "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
                },
                "singleLogoutService": {
                    "url": self.base + "/slo",
                    "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
                },
                "NameIDFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                "x509cert": keys.cert_pem,
                "privateKey": keys.key_pem,
            },
            "idp": idp["idp"],
            "security": {
                "authnRequestsSigned": sign_requests,
                "logoutRequestSigned": True,
                "logoutResponseSigned": True,
                "wantAssertionsSigned": True,
                "wantMessagesSigned": want_messages_signed,
                "wantAssertionsEncrypted": encrypted,
                "wantNameId": True,
                "rejectDeprecatedAlgorithm": True,
                "signatureAlgorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                "digestAlgorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
                "requestedAuthnContext": False,
            },
        }
        self.last_request_id: str | None = None
        self.last_logout_id: str | None = None
        self.session: Received | None = None
        self.server = PeerServer(self._app(), self.port)

    def saml_settings(self) -> Any:
        """python3-saml's settings object."""
        from onelogin.saml2.settings import OneLogin_Saml2_Settings

        return OneLogin_Saml2_Settings(self.settings, sp_validation_only=False)

    def metadata(self) -> str:
        """This SP's metadata, as python3-saml writes it."""
        return self.saml_settings().get_sp_metadata().decode()

    def _request_data(self) -> dict[str, Any]:
        return {
            "https": "off",
            "http_host": f"127.0.0.1:{self.port}",
            "script_name": flask_request.path,
            "get_data": flask_request.args.to_dict(),
            "post_data": flask_request.form.to_dict(),
            "query_string": flask_request.query_string.decode(),
        }

    def _app(self) -> Flask:
        from onelogin.saml2.auth import OneLogin_Saml2_Auth
        from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
        from onelogin.saml2.utils import OneLogin_Saml2_Utils

        app = Flask("onelogin-sp")

        @app.get("/login")
        def login() -> Response:
            args = flask_request.args
            force, passive = args.get("force") == "1", args.get("passive") == "1"
            relay = args.get("relay", "")
            if args.get("binding") == "post":
                settings = self.saml_settings()
                authn = OneLogin_Saml2_Authn_Request(settings, force, passive)
                xml = authn.get_xml()
                if self.settings["security"]["authnRequestsSigned"]:
                    xml = OneLogin_Saml2_Utils.add_sign(
                        xml, self.keys.key_pem, self.keys.cert_pem,
                        sign_algorithm=self.settings["security"]["signatureAlgorithm"],
                        digest_algorithm=self.settings["security"]["digestAlgorithm"],
                    )
                self.last_request_id = authn.get_id()
                value = base64.b64encode(xml if isinstance(xml, bytes) else xml.encode()).decode()
                page = (
                    f'<form method="post" action="{html.escape(settings.get_idp_sso_url())}">'
                    f'<input type="hidden" name="SAMLRequest" value="{value}">'
                    f'<input type="hidden" name="RelayState" value="{html.escape(relay)}">'
                    "</form>"
                )
                return Response(page)
            auth = OneLogin_Saml2_Auth(self._request_data(), self.settings)
            url = auth.login(return_to=relay, force_authn=force, is_passive=passive)
            self.last_request_id = auth.get_last_request_id()
            return redirect(url)

        @app.post("/acs")
        def acs() -> Response:
            auth = OneLogin_Saml2_Auth(self._request_data(), self.settings)
            auth.process_response(request_id=self.last_request_id)
            errors = auth.get_errors()
            reason = auth.get_last_error_reason()
            received = Received(
                ok=not errors and auth.is_authenticated(),
                errors=errors + ([reason] if reason else []),
                name_id=auth.get_nameid(),
                name_id_format=auth.get_nameid_format(),
                session_index=auth.get_session_index(),
                attributes=auth.get_attributes(),
                relay_state=flask_request.form.get("RelayState"),
                in_response_to=auth.get_last_response_in_response_to(),
            )
            if received.ok:
                self.session = received
            return jsonify(received.__dict__)

        @app.get("/logout")
        def logout() -> Response:
            auth = OneLogin_Saml2_Auth(self._request_data(), self.settings)
            session = self.session
            assert session is not None
            url = auth.logout(
                return_to="done",
                name_id=session.name_id,
                session_index=session.session_index,
                name_id_format=session.name_id_format,
            )
            self.last_logout_id = auth.get_last_request_id()
            return redirect(url)

        @app.get("/slo")
        def slo() -> Response:
            auth = OneLogin_Saml2_Auth(self._request_data(), self.settings)
            url = auth.process_slo(
                request_id=self.last_logout_id,
                delete_session_cb=lambda: setattr(self, "session", None),
            )
            errors = auth.get_errors()
            if url:
                return redirect(url)
            return jsonify({"ok": not errors, "errors": errors,
                            "reason": auth.get_last_error_reason(),
                            "relay_state": flask_request.args.get("RelayState")})

        return app


# pysaml2 -------------------------------------------------------------------------------------


class PySaml2Sp:
    """A pysaml2 service provider (default xmlsec1 backend) with strict settings."""

    name = "pysaml2"

    def __init__(self, idp_metadata: str, keys: KeyPair, workdir: Path, *, encrypted: bool = False):
        from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
        from saml2.client import Saml2Client
        from saml2.config import SPConfig

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        key_file, cert_file = keys.write(workdir, "pysaml2-sp")
        self.config_dict: dict[str, Any] = {
            "entityid": self.base + "/metadata",
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "metadata": {"inline": [idp_metadata]},
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "signing_algorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            "digest_algorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
            "accepted_time_diff": 60,
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "endpoints": {
                        "assertion_consumer_service": [(self.base + "/acs", BINDING_HTTP_POST)],
                        "single_logout_service": [(self.base + "/slo", BINDING_HTTP_REDIRECT)],
                    },
                    "authn_requests_signed": True,
                    "logout_requests_signed": True,
                    "want_assertions_signed": True,
                    "want_response_signed": False,
                    "allow_unsolicited": True,
                    "name_id_format": ["urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"],
                    "requested_attribute_name_format":
                        "urn:oasis:names:tc:SAML:2.0:attrname-format:uri",
                }
            },
        }
        if encrypted:
            self.config_dict["encryption_keypairs"] = [
                {"key_file": str(key_file), "cert_file": str(cert_file)}
            ]
            self.config_dict["service"]["sp"]["want_assertions_or_response_signed"] = True
        config = SPConfig()
        config.load(self.config_dict)
        self.client = Saml2Client(config)
        self.outstanding: dict[str, str] = {}
        self.session: Received | None = None
        self.name_id: Any = None
        self.server = PeerServer(self._app(), self.port)

    def metadata(self) -> str:
        """This SP's metadata, as pysaml2 writes it."""
        from saml2.metadata import create_metadata_string

        return create_metadata_string(
            None, config=self.client.config, valid=1, cert=None, keyfile=None, sign=False
        ).decode()

    def _app(self) -> Flask:
        from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
        from saml2.s_utils import UnknownPrincipal  # noqa: F401 - imported for side effects

        app = Flask("pysaml2-sp")

        @app.get("/login")
        def login() -> Response:
            binding = (
                BINDING_HTTP_POST if flask_request.args.get("binding") == "post"
                else BINDING_HTTP_REDIRECT
            )
            request_id, info = self.client.prepare_for_authenticate(
                binding=binding,
                relay_state=flask_request.args.get("relay", ""),
                sign=True,
                sigalg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
                force_authn="true" if flask_request.args.get("force") == "1" else None,
            )
            self.outstanding[request_id] = "/"
            return _http_info(info)

        @app.post("/acs")
        def acs() -> Response:
            try:
                response = self.client.parse_authn_request_response(
                    flask_request.form["SAMLResponse"], BINDING_HTTP_POST,
                    outstanding=self.outstanding,
                )
            except Exception as exc:  # noqa: BLE001 - the SP's refusal is the test's data
                return jsonify(Received(ok=False, errors=[f"{type(exc).__name__}: {exc}"]).__dict__)
            if response is None:
                return jsonify(Received(ok=False, errors=["no response"]).__dict__)
            assertion = response.assertion
            statement = assertion.authn_statement[0]
            self.name_id = response.name_id
            received = Received(
                ok=True,
                name_id=response.name_id.text,
                name_id_format=response.name_id.format,
                session_index=statement.session_index,
                attributes={
                    a.name: [v.text for v in a.attribute_value]
                    for s in assertion.attribute_statement for a in s.attribute
                },
                relay_state=flask_request.form.get("RelayState"),
                in_response_to=response.in_response_to,
            )
            self.session = received
            return jsonify(received.__dict__)

        @app.get("/logout")
        def logout() -> Response:
            result = self.client.global_logout(
                self.name_id, sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            )
            (_binding, info), = result.values()
            return _http_info(info)

        @app.get("/slo")
        def slo() -> Response:
            args = flask_request.args
            if "SAMLResponse" in args:
                try:
                    answer = self.client.parse_logout_request_response(
                        args["SAMLResponse"], BINDING_HTTP_REDIRECT
                    )
                except Exception as exc:  # noqa: BLE001
                    return jsonify({"ok": False, "errors": [f"{type(exc).__name__}: {exc}"]})
                ok = answer is not None and answer.status_ok()
                return jsonify({"ok": ok, "errors": [], "relay_state": args.get("RelayState")})
            info = self.client.handle_logout_request(
                args["SAMLRequest"], self.name_id, BINDING_HTTP_REDIRECT,
                sign=True, sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
                relay_state=args.get("RelayState"),
                sigalg=args.get("SigAlg"), signature=args.get("Signature"),
            )
            self.session = None
            return _http_info(info)

        return app


def _http_info(info: dict[str, Any]) -> Response:
    """Turn pysaml2's http_info (redirect headers or a POST page) into a Flask response."""
    headers = dict(info.get("headers") or [])
    if "Location" in headers:
        return redirect(headers["Location"])
    return Response(info.get("data") or "", status=int(info.get("status", 200)))


def received_json(response: requests.Response) -> dict[str, Any]:
    """Decode an SP's JSON page (for error messages in assertions)."""
    return json.loads(response.text)
