"""The bridge under granian (`server.engine: granian`), through the wire.

The rest of the suite runs the default engine (gunicorn); these tests start `bridge serve` with
granian and check what an operator and a partner see: health, a browser sign-in, an OAuth
client_credentials grant verified against the JWKS, the response headers, metrics merged across
workers, JSON access logs, TLS, and a graceful SIGTERM.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt as pyjwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ALICE_PASSWORD, USERS
from tests.support import (
    BRIDGE,
    REPO,
    LiveBridge,
    browser_client,
    free_port,
    live_bridge,
    prepare,
    sign_in,
    stop,
    write_config,
)

# Set in the server's process environment: granian starts each request's environ from a copy
# of os.environ, so without the bridge's guard this would read as a header the client sent.
INHERITED_REQUEST_ID = "inherited-from-the-process-env"
DAEMON_SECRET = secrets.token_urlsafe(32)


def _register_daemon(config_path: Path) -> None:
    from bridge.config import load_config
    from bridge.frontends.oidc.clients import secret_digest
    from bridge.relying_parties import OidcRelyingParty, RelyingPartyRegistry
    from bridge.store import open_store

    store = open_store(load_config(config_path).store)
    RelyingPartyRegistry(store, []).save(OidcRelyingParty.model_validate({
        "id": "daemon", "name": "Daemon", "protocol": "oidc", "client_id": "daemon",
        "redirect_uris": [], "client_secret_sha256": secret_digest(DAEMON_SECRET),
        "grant_types": ["client_credentials"], "scopes": ["api.read"],
        "access_token_audience": "https://api.example.test",
    }))
    store.close()


@pytest.fixture(scope="module")
def granian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    """A bridge under granian, two workers, with an HTTP_* variable in its environment."""
    path = write_config(tmp_path_factory.mktemp("granian") / "bridge",
                        server={"engine": "granian"})
    prepare(path, USERS)
    _register_daemon(path)
    os.environ["HTTP_X_REQUEST_ID"] = INHERITED_REQUEST_ID
    try:
        server = live_bridge(path, workers=2)
        live = server.__enter__()  # the environment is copied when the server starts
    finally:
        del os.environ["HTTP_X_REQUEST_ID"]
    try:
        yield live
    finally:
        server.__exit__(None, None, None)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_and_a_browser_sign_in(granian: LiveBridge) -> None:
    health = requests.get(granian.url + "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert health.headers["server"] == "granian"
    answer = sign_in(browser_client(), granian.url, "alice", ALICE_PASSWORD)
    assert answer.status_code == 200 and "alice" in answer.text
    refused = sign_in(browser_client(), granian.url, "alice", "not the password")
    assert refused.status_code == 401


def test_client_credentials_token_verifies_against_the_jwks(granian: LiveBridge) -> None:
    response = requests.post(granian.url + "/oauth2/token", auth=("daemon", DAEMON_SECRET),
                             data={"grant_type": "client_credentials", "scope": "api.read"})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()["access_token"]
    jwks = pyjwt.PyJWKClient(granian.url + "/oauth2/jwks")
    claims = pyjwt.decode(token, jwks.get_signing_key_from_jwt(token).key, algorithms=["ES256"],
                          audience="https://api.example.test", issuer=granian.url)
    assert claims["client_id"] == "daemon" and claims["scope"] == "api.read"
    assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"
    wrong = requests.post(granian.url + "/oauth2/token", auth=("daemon", "wrong"),
                          data={"grant_type": "client_credentials"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_every_response_carries_the_policy_headers(granian: LiveBridge) -> None:
    for path in ("/login", "/healthz", "/no-such-page"):
        headers = requests.get(granian.url + path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-ID"]), path
    static = requests.get(granian.url + "/static/bridge.css")
    assert static.status_code == 200 and "no-store" not in static.headers.get("Cache-Control", "")
    # The discovery document keeps its own caching policy.
    discovery = requests.get(granian.url + "/.well-known/openid-configuration")
    assert discovery.headers["Cache-Control"] == "public, max-age=300"


def test_process_environment_does_not_pass_for_request_headers(granian: LiveBridge) -> None:
    plain = requests.get(granian.url + "/healthz")
    assert plain.headers["X-Request-ID"] != INHERITED_REQUEST_ID
    assert re.fullmatch(r"[0-9a-f]{16}", plain.headers["X-Request-ID"])
    sent = requests.get(granian.url + "/healthz", headers={"X-Request-ID": "sent-by-client-42"})
    assert sent.headers["X-Request-ID"] == "sent-by-client-42"


def test_metrics_add_up_across_workers_and_logs_are_json(granian: LiveBridge) -> None:
    before = _metric(requests.get(granian.url + "/metrics").text, "bridge_http_requests_total",
                     endpoint="ops.readyz", method="GET", status="200")
    for _ in range(20):  # a new connection each: the workers share the listening socket
        assert requests.get(granian.url + "/readyz").status_code == 200
    text = requests.get(granian.url + "/metrics").text
    after = _metric(text, "bridge_http_requests_total", endpoint="ops.readyz", method="GET",
                    status="200")
    assert after - before == 20
    assert _metric(text, "bridge_http_request_duration_seconds_count",
                   endpoint="ops.readyz") >= 20

    requests.get(granian.url + "/login", headers={"X-Request-ID": "trace-granian-0001"})
    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        entries = [json.loads(line) for line in granian.logs().splitlines()
                   if line.startswith("{")]
        lines = [e for e in entries if e.get("request_id") == "trace-granian-0001"]
        time.sleep(0.05)
    assert lines and lines[0]["logger"] == "bridge.access"
    assert lines[0]["path"] == "/login" and lines[0]["status"] == 200
    assert {"time", "level", "method", "duration_ms", "client_ip"} <= set(lines[0])
    assert ALICE_PASSWORD not in granian.logs()
    assert "Traceback" not in granian.logs()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_and_graceful_sigterm(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    path = write_config(tmp_path / "bridge", port=port, server={
        "engine": "granian", "public_url": f"https://localhost:{port}",
        "tls_cert": str(cert), "tls_key": str(key)})
    prepare(path, USERS)
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([*BRIDGE, "serve", "--config", str(path), "--workers", "2"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                               start_new_session=True)
    client = requests.Session()
    client.trust_env = False  # the machine-wide CA bundle variables would replace `verify`
    client.verify = str(cert)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if client.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, "no TLS answer within 30 s"
                time.sleep(0.1)
        page = client.get(url + "/login")
        assert page.status_code == 200 and "Sign in" in page.text
        # TLS 1.2 clients are accepted, as under gunicorn (granian's own default is 1.3 only).
        context = ssl.create_default_context(cafile=str(cert))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == "TLSv1.2"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/healthz", verify=True, timeout=5)  # not a trusted CA

        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        assert _group_gone(process.pid)
    finally:
        stop(process)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def _group_gone(pgid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False

