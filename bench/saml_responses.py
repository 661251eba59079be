"""SAML IdP benchmark: signed responses per CPU-second, memory growth, full sign-ins over HTTP.

Side by side in one run, with the same RSA-2048 key, user and attributes:
  - bridge: SamlFrontend.build_sso_response (lxml tree, python-xmlsec with a kept key)
  - bridge-add_sign: the same response, but the assertion signed by python3-saml's add_sign
  - pysaml2 (xmlsec1): a pysaml2 `Server` IdP with its default backend (xmlsec1 subprocesses)
  - pysaml2 (in-process): the same Server with a python-xmlsec signer plugged in as backend,
    keeping the parsed key; and (keyfile) loading the key_file pysaml2 passes on each call
  - rsa-2048 sign: the raw RSA-SHA256 signature rate of this machine (the ceiling)
Each measurement runs in its own subprocess pinned to one core; "per core" is responses per
CPU-second of that process (the machine is shared, so wall time is noisier and shown too).
Then a live bridge (gunicorn) is driven over HTTP: SSO with an existing session, and full
SP-initiated sign-ins (AuthnRequest -> sign-in page -> password -> POSTed Response).

Run: .venv/bin/python bench/saml_responses.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORK = REPO / "bench" / ".work"
SP_ENTITY = "https://sp.bench.test/metadata"
ACS = "https://sp.bench.test/acs"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
PPT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
PASSWORD = "bench password that is long enough"
RELEASE = [
    {"type": "attribute", "name": "urn:oid:0.9.2342.19200300.100.1.3", "from": "email",
     "friendly_name": "mail"},
    {"type": "attribute", "name": "urn:oid:2.16.840.1.113730.3.1.241", "from": "display_name",
     "friendly_name": "displayName"},
    {"type": "groups", "name": "urn:oid:1.3.6.1.4.1.5923.1.5.1.1", "friendly_name": "isMemberOf"},
]


def rss_kib() -> int:
    """Resident set size of this process in KiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def sp_metadata() -> str:
    """A minimal SP EntityDescriptor (for pysaml2's IdP)."""
    return (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'entityID="{SP_ENTITY}"><md:SPSSODescriptor protocolSupportEnumeration='
        '"urn:oasis:names:tc:SAML:2.0:protocol" WantAssertionsSigned="true">'
        f"<md:NameIDFormat>{PERSISTENT}</md:NameIDFormat>"
        '<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'Location="{ACS}" index="0"/></md:SPSSODescriptor></md:EntityDescriptor>'
    )


# Setup -----------------------------------------------------------------------------------------


def prepare(directory: Path) -> Path:
    """A bridge config with RSA-2048 keys, one user and one SP; returns the config path."""
    from bridge.relying_parties import RelyingPartyRegistry, SamlRelyingParty
    from bridge.store import open_store
    from tests.support import prepare as prepare_bridge
    from tests.support import write_config

    config = write_config(directory / "bridge", logging={"level": "WARNING", "format": "json"})
    prepare_bridge(config, {})
    from bridge.config import load_config
    from bridge.sources.embedded import EmbeddedDirectory

    store = open_store(load_config(config).store)
    EmbeddedDirectory(store, "local").add_user(
        "alice", PASSWORD, display_name="Alice Example", email="alice@example.test",
        groups=["staff", "finance", "vpn-users"],
    )
    party = SamlRelyingParty.model_validate({
        "id": "bench-sp", "name": "Bench SP", "protocol": "saml", "entity_id": SP_ENTITY,
        "acs": [{"url": ACS, "index": 0}], "release": RELEASE,
    })
    RelyingPartyRegistry(store, []).save(party)
    store.close()
    return config


def key_files(config: Path) -> tuple[Path, Path]:
    """The bridge's current SAML key and certificate as PEM files (for pysaml2)."""
    from cryptography.hazmat.primitives import serialization

    from bridge.config import load_config
    from bridge.keys import KeyRing

    key = KeyRing.load(load_config(config).keys.dir).current("saml")
    key_path, cert_path = config.parent / "idp.key", config.parent / "idp.crt"
    key_path.write_bytes(key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_text(key.certificate_pem())
    return key_path, cert_path


# Response makers (one per implementation) ------------------------------------------------------


def bridge_maker(config: Path, use_add_sign: bool = False) -> Any:
    """A function producing one Base64 signed Response from the bridge's own code."""
    from bridge.app import create_app
    from bridge.frontends.saml.frontend import Target
    from bridge.identity import Authentication

    app = create_app(config_path=config)
    context = app.test_request_context()
    context.push()
    bridge = app.extensions["bridge"]
    identity = bridge.sources[0].authenticate("alice", PASSWORD).identity
    session = bridge.sessions.create(identity.with_authentication(Authentication(source="local")))
    sp = bridge.relying_parties.get("bench-sp")
    frontend = bridge.login_flow.frontends["saml"]
    target = Target(sp_id=sp.id, acs_url=ACS, in_response_to="_req", relay_state=None)
    if use_add_sign:
        from lxml import etree
        from onelogin.saml2.utils import OneLogin_Saml2_Utils

        from bridge.frontends.saml import frontend as module

        key = bridge.keys.current("saml")
        from cryptography.hazmat.primitives import serialization

        key_pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        cert_pem = key.certificate_pem()

        class AddSignSigner:
            def sign(self, element: Any) -> None:
                signed = OneLogin_Saml2_Utils.add_sign(
                    etree.tostring(element), key_pem, cert_pem,
                    sign_algorithm=RSA_SHA256, digest_algorithm=SHA256)
                replacement = etree.fromstring(signed)
                element.clear()
                element.attrib.update(replacement.attrib)
                for child in replacement:
                    element.append(child)

        module.SamlFrontend.signer = lambda self: AddSignSigner()  # type: ignore[method-assign]

    def make() -> bytes:
        message, _name_id, _index = frontend.build_sso_response(sp, session, target)
        return base64.b64encode(message)

    return make


class InProcessXmlsec:
    """A pysaml2 crypto backend that signs with python-xmlsec in-process.

    keep_key=True loads the key once (the fastest such backend); keep_key=False loads it from
    the key_file pysaml2 passes to sign_statement on each call, as a straightforward backend
    written to that interface does.
    """

    def __init__(self, key_path: Path, cert_path: Path, fallback: Any, keep_key: bool = True):
        self.cert_path = cert_path
        self.keep_key = keep_key
        self.key = self._load(str(key_path))
        self.fallback = fallback

    def _load(self, key_file: str) -> Any:
        import xmlsec

        key = xmlsec.Key.from_file(key_file, xmlsec.KeyFormat.PEM)
        key.load_cert_from_file(str(self.cert_path), xmlsec.KeyFormat.PEM)
        return key

    def sign_statement(self, statement: Any, node_name: str, key_file: str, node_id: str) -> str:
        """Sign the node pysaml2 prepared a Signature template for."""
        import xmlsec
        from lxml import etree

        data = statement if isinstance(statement, bytes) else str(statement).encode()
        root = etree.fromstring(data)
        xmlsec.tree.add_ids(root, ["ID"])
        namespace, local = node_name.rsplit(":", 1)
        for node in root.iter(f"{{{namespace}}}{local}"):
            if not node_id or node.get("ID") == node_id:
                signature = node.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
                context = xmlsec.SignatureContext()
                context.key = self.key if self.keep_key else self._load(key_file)
                context.sign(signature)
        return etree.tostring(root, encoding="unicode")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


def pysaml2_maker(config: Path, in_process: bool, keep_key: bool = True) -> Any:
    """A function producing one Base64 signed Response from a pysaml2 Server IdP."""
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.config import IdPConfig
    from saml2.saml import NAME_FORMAT_URI, NameID
    from saml2.server import Server

    key_path, cert_path = key_files(config)
    idp = IdPConfig()
    idp.load({
        "entityid": "http://localhost/saml/metadata",
        "key_file": str(key_path),
        "cert_file": str(cert_path),
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "metadata": {"inline": [sp_metadata()]},
        "service": {"idp": {
            "endpoints": {"single_sign_on_service": [
                ("http://localhost/saml/sso", BINDING_HTTP_REDIRECT),
                ("http://localhost/saml/sso", BINDING_HTTP_POST)]},
            "policy": {"default": {"lifetime": {"minutes": 5}, "name_form": NAME_FORMAT_URI}},
            "name_id_format": [PERSISTENT],
        }},
    })
    server = Server(config=idp)
    if in_process:
        server.sec.crypto = InProcessXmlsec(key_path, cert_path, server.sec.crypto, keep_key)
    identity = {"mail": ["alice@example.test"], "displayName": ["Alice Example"],
                "isMemberOf": ["staff", "finance", "vpn-users"]}

    def make() -> bytes:
        response = server.create_authn_response(
            identity, "_req", ACS, SP_ENTITY, userid="alice",
            name_id=NameID(format=PERSISTENT, text="pairwise-id-for-alice"),
            authn={"class_ref": PPT, "authn_auth": "http://localhost/saml/metadata"},
            sign_assertion=True, sign_response=False, sign_alg=RSA_SHA256, digest_alg=SHA256,
        )
        return base64.b64encode(str(response).encode())

    return make


def rsa_maker(config: Path) -> Any:
    """One raw RSA-2048 PKCS#1 v1.5 SHA-256 signature (the machine's ceiling)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from bridge.config import load_config
    from bridge.keys import KeyRing

    key = KeyRing.load(load_config(config).keys.dir).current("saml").private_key
    data = b"x" * 600

    def make() -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return make


MAKERS = {
    "bridge": lambda config: bridge_maker(config),
    "bridge-add_sign": lambda config: bridge_maker(config, use_add_sign=True),
    "pysaml2-xmlsec1": lambda config: pysaml2_maker(config, in_process=False),
    "pysaml2-inprocess": lambda config: pysaml2_maker(config, in_process=True),
    "pysaml2-inprocess-keyfile": lambda config: pysaml2_maker(config, in_process=True,
                                                              keep_key=False),
    "rsa-2048-sign": rsa_maker,
}


def measure(name: str, config: Path, seconds: float, memory_n: int) -> dict[str, Any]:
    """Run one maker single-threaded; responses per CPU-second, per wall-second, RSS growth."""
    make = MAKERS[name](config)
    for _ in range(20):
        make()
    count, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        make()
        count += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # xmlsec1 runs in child processes: count their CPU time too.
    children = os.times()
    cpu += children.children_user + children.children_system
    result = {"name": name, "n": count, "per_cpu_second": count / cpu, "per_wall_second":
              count / wall, "size": len(make())}
    if memory_n:
        before = rss_kib()
        for _ in range(memory_n):
            make()
        result["rss_growth_kib"] = rss_kib() - before
        result["memory_n"] = memory_n
    return result


# HTTP ------------------------------------------------------------------------------------------


def authn_request_query(public_url: str, number: int) -> str:
    """An unsigned Redirect-binding AuthnRequest (the bench SP does not sign)."""
    issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = (
        '<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" '
        f'ID="_bench{number}_{time.time_ns()}" Version="2.0" IssueInstant="{issued}" '
        f'Destination="{public_url}/saml/sso" AssertionConsumerServiceURL="{ACS}">'
        f"<saml:Issuer>{SP_ENTITY}</saml:Issuer></samlp:AuthnRequest>"
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    value = base64.b64encode(compressor.compress(xml.encode()) + compressor.flush()).decode()
    return "SAMLRequest=" + quote(value, safe="")


def http_phase(config: Path, seconds: float, threads: int) -> dict[str, Any]:
    """Drive a live bridge: SSO with a session, and full sign-ins with the password."""
    from tests.support import browser_client, form_fields, live_bridge

    results: dict[str, Any] = {}
    with live_bridge(config, workers=2) as bridge:
        counter = iter(range(10**9))
        lock = threading.Lock()

        def next_number() -> int:
            with lock:
                return next(counter)

        def full_sign_in(client: Any) -> None:
            page = client.get(bridge.url + "/saml/sso?" + authn_request_query(
                bridge.url, next_number()))
            answer = client.post(bridge.url + "/login", data={
                **form_fields(page.text), "username": "alice", "password": PASSWORD})
            assert "SAMLResponse" in answer.text, answer.status_code

        def with_session(client: Any) -> None:
            page = client.get(bridge.url + "/saml/sso?" + authn_request_query(
                bridge.url, next_number()))
            assert "SAMLResponse" in page.text, page.status_code

        for label, action, fresh in (("full_sign_ins", full_sign_in, True),
                                     ("sso_with_session", with_session, False)):
            done = [0] * threads
            stop = time.perf_counter() + seconds

            def worker(slot: int, action: Any = action, fresh: bool = fresh,
                       done: list[int] = done, stop: float = stop) -> None:
                client = browser_client()
                if not fresh:
                    full_sign_in(client)
                while time.perf_counter() < stop:
                    if fresh:
                        client.cookies.clear()
                    action(client)
                    done[slot] += 1

            pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
            start = time.perf_counter()
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            results[label] = sum(done) / (time.perf_counter() - start)
    return results


# Driver ----------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    # One core for the whole measurement (the bridge signs on a helper thread; pysaml2's
    # xmlsec1 children inherit it): "per core" means one core, not threads spread over two.
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    result = measure(args.phase, Path(args.config), args.seconds, args.memory_n)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--phase")
    parser.add_argument("--config")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--memory-n", type=int, default=0)
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    seconds = 2.0 if args.quick else 10.0
    memory_n = 300 if args.quick else 2000
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        config = prepare(Path(tmp))
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
              f"{seconds:.0f} s per measurement, memory over {memory_n} responses")
        results = {}
        for name in MAKERS:
            # The bridge over several renewals of its signing thread (every 10,000 signatures):
            # a leak of tens of bytes per response only shows over tens of thousands.
            n = {"rsa-2048-sign": 0, "pysaml2-xmlsec1": memory_n // 10,
                 "bridge": memory_n * 15}.get(name, memory_n)
            output = subprocess.run(
                [sys.executable, __file__, "--phase", name, "--config", str(config),
                 "--seconds", str(seconds), "--memory-n", str(n)],
                capture_output=True, text=True, check=True, cwd=REPO,
            ).stdout.strip().splitlines()[-1]
            result = json.loads(output)
            results[name] = result
            growth = (f"  RSS +{result['rss_growth_kib'] / result['memory_n'] * 1000 / 1024:.1f}"
                      f" MB per 1,000 (over {result['memory_n']:,})" if result.get("memory_n")
                      else "")
            print(f"{name:26} {result['per_cpu_second']:8.0f}/s per core "
                  f"({result['per_wall_second']:6.0f}/s wall, n={result['n']}){growth}")
        rate = {name: result["per_cpu_second"] for name, result in results.items()}
        print(f"bridge / pysaml2 in-process: {rate['bridge'] / rate['pysaml2-inprocess']:.1f}x "
              f"(key kept), {rate['bridge'] / rate['pysaml2-inprocess-keyfile']:.1f}x "
              "(key file read per call); "
              f"bridge / pysaml2 xmlsec1: {rate['bridge'] / rate['pysaml2-xmlsec1']:.1f}x; "
              f"bridge / RSA ceiling: {rate['bridge'] / rate['rsa-2048-sign']:.2f}")
        http = http_phase(config, seconds, threads=4)
        print(f"HTTP (gunicorn, 2 workers, 4 client threads on the same 2 cores): "
              f"{http['sso_with_session']:.0f} SSO responses/s with a session, "
              f"{http['full_sign_ins']:.1f} full SP-initiated sign-ins/s (argon2 password check)")


if __name__ == "__main__":
    main()
