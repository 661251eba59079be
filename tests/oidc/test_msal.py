"""Microsoft's msal against the bridge over HTTPS (a test CA made at test time)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import USERS
from tests.oidc.conftest import CALLBACK, RELEASE, register, verify
from tests.support import BRIDGE, REPO, browser_client, free_port, prepare, stop, write_config

SECRET = "msal-test-secret-" + "x" * 32


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a localhost server certificate signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("bridge test CA"))
        .issuer_name(_name("bridge test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path = directory / "ca.pem", directory / "tls.pem"
    key_path = directory / "tls.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def https_session(ca: Path) -> requests.Session:
    """A requests session that trusts only the test CA (the machine's CA variables ignored)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    return session


@pytest.fixture(scope="module")
def tls_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A bridge serving HTTPS with a msal-style confidential client registered."""
    base = tmp_path_factory.mktemp("oidc-tls")
    ca, cert, key = make_tls(base / "tls")
    port = free_port()
    path = write_config(base / "bridge", port=port,
                        server={"public_url": f"https://localhost:{port}",
                                "tls_cert": str(cert), "tls_key": str(key)})
    prepare(path, USERS)
    from bridge.frontends.oidc.clients import secret_digest

    register(path, [{
        "id": "msal-app", "name": "msal app", "protocol": "oidc", "client_id": "msal-app",
        "redirect_uris": [CALLBACK], "client_secret_sha256": secret_digest(SECRET),
        "auth_method": "client_secret_post", "release": RELEASE,
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes": ["openid", "profile", "email", "offline_access", "api://bridge/.default"],
    }])
    log = (base / "server.log").open("w")
    process = subprocess.Popen([*BRIDGE, "serve", "--config", str(path), "--workers", "2"],
                               stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               start_new_session=True)
    url = f"https://localhost:{port}"
    session = https_session(ca)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (base / "server.log").read_text()[-2000:]
            try:
                if session.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "bridge over TLS did not come up"
            time.sleep(0.1)
        yield url, ca
    finally:
        stop(process)
        log.close()


def _app(url: str, ca: Path) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        "msal-app", client_credential=SECRET, oidc_authority=url + "/oauth2",
        http_client=https_session(ca),
    )


def test_msal_client_credentials(tls_bridge: tuple[str, Path]) -> None:
    """msal's acquire_token_for_client gets a verifiable access token from the bridge."""
    import jwt as pyjwt

    url, ca = tls_bridge
    result = _app(url, ca).acquire_token_for_client(scopes=["api://bridge/.default"])
    assert "access_token" in result, result
    jwks = pyjwt.PyJWKClient(url + "/oauth2/jwks",
                             ssl_context=__import__("ssl").create_default_context(cafile=str(ca)))
    claims = verify(jwks, result["access_token"], "msal-app", url, typ="at+jwt")
    assert claims["scope"] == "api://bridge/.default" and claims["sub"] == "msal-app"


def test_msal_auth_code_flow(tls_bridge: tuple[str, Path]) -> None:
    """msal's auth-code flow (PKCE and state handled by msal) through the bridge's sign-in."""
    import re

    url, ca = tls_bridge
    app = _app(url, ca)
    flow = app.initiate_auth_code_flow(scopes=["email"], redirect_uri=CALLBACK)
    browser = browser_client()
    browser.verify = str(ca)
    page = browser.get(flow["auth_uri"])
    assert page.status_code == 200 and "csrf_token" in page.text
    fields = dict(re.findall(r'name="(csrf_token|request)" value="([^"]*)"', page.text))
    answer = browser.post(url + "/login", allow_redirects=False, data={
        **fields, "username": "alice", "password": USERS["alice"]})
    location = answer.headers["Location"]
    assert location.startswith(CALLBACK)
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params["iss"] == url
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "access_token" in result, result
    assert result["id_token_claims"]["email"] == "alice@example.test"
    assert result["id_token_claims"]["aud"] == "msal-app"
    accounts = app.get_accounts()
    assert len(accounts) == 1
    silent = app.acquire_token_silent(["email"], account=accounts[0], force_refresh=True)
    assert silent and "access_token" in silent, silent
