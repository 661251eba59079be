"""A live bridge with SAML service providers registered from their own metadata."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from tests.conftest import ALICE_PASSWORD, USERS
from tests.saml.peers import KeyPair, OneLoginSp, PySaml2Sp, make_keypair
from tests.support import (
    LiveBridge,
    form_fields,
    live_bridge,
    prepare,
    run_cli,
    write_config,
)

# Directory values an attacker might control (S03, S04).
MALLORY_PASSWORD = "mallory's long password 1"
MALLORY_DISPLAY = 'M </saml:AttributeValue><saml:Attribute Name="role"> & "q" ]]> <x/>'
MALLORY_EMAIL = "m<!-- x -->@example.test"

RELEASE = [
    {"type": "attribute", "name": "urn:oid:0.9.2342.19200300.100.1.3", "from": "email",
     "friendly_name": "mail"},
    {"type": "attribute", "name": "displayName", "from": "display_name"},
    {"type": "groups", "name": "urn:oid:1.3.6.1.4.1.5923.1.5.1.1", "friendly_name": "isMemberOf"},
]


@dataclass
class SamlEnv:
    """The running bridge, its IdP metadata, and the SPs registered with it."""

    bridge: LiveBridge
    idp_metadata: str
    onelogin: OneLoginSp
    onelogin_encrypted: OneLoginSp
    pysaml2: PySaml2Sp
    workdir: Path
    keys: dict[str, KeyPair]

    def registry(self) -> Any:
        """The relying-party registry over the bridge's store (for test-time edits)."""
        from bridge.config import load_config
        from bridge.relying_parties import RelyingPartyRegistry
        from bridge.store import open_store

        config = load_config(self.bridge.config_path)
        return RelyingPartyRegistry(open_store(config.store), [])

    @contextmanager
    def changed(self, party_id: str, **changes: Any) -> Iterator[None]:
        """Change a stored SP's settings for the duration of a block."""
        registry = self.registry()
        original = registry.get(party_id)
        document = registry.store.get_document("relying-party", party_id)
        updated = type(original).model_validate(
            {**original.model_dump(mode="json", by_alias=True), **changes}
        )
        saved = registry.save(updated, document.version)
        try:
            yield
        finally:
            registry.save(original, saved.version)
            registry.store.close()


def register(env_dir: Path, config: Path, sp: Any, party_id: str) -> str:
    """`bridge rp add-saml --metadata FILE --id ID` with the SP's own metadata."""
    path = env_dir / f"{party_id}.xml"
    path.write_text(sp.metadata())
    result = run_cli("rp", "add-saml", "--config", str(config), "--metadata", str(path),
                     "--id", party_id, "--name", f"{sp.name} app")
    assert result.returncode == 0, result.stderr
    return result.stdout


def set_release(config: Path, party_id: str, release: list[dict[str, Any]]) -> None:
    """Give a stored SP its release rules."""
    from bridge.config import load_config
    from bridge.relying_parties import RelyingPartyRegistry
    from bridge.store import open_store

    registry = RelyingPartyRegistry(open_store(load_config(config).store), [])
    party = registry.get(party_id)
    document = registry.store.get_document("relying-party", party_id)
    data = {**party.model_dump(mode="json", by_alias=True), "release": release}
    registry.save(type(party).model_validate(data), document.version)
    registry.store.close()


def add_mallory(config: Path) -> None:
    """Add the user whose directory values try to break out of their XML (S03, S04)."""
    from bridge.config import load_config
    from bridge.sources.embedded import EmbeddedDirectory
    from bridge.store import open_store

    store = open_store(load_config(config).store)
    EmbeddedDirectory(store, "local").add_user(
        "mallory", MALLORY_PASSWORD, display_name=MALLORY_DISPLAY, email=MALLORY_EMAIL,
        groups=["staff"],
    )
    store.close()


class HasBridge(Protocol):
    """A test environment with a running bridge."""

    bridge: LiveBridge


def bridge_sign_in(env: HasBridge, client: requests.Session, page: requests.Response,
                   user: str = "alice", password: str = ALICE_PASSWORD) -> requests.Response:
    """Fill in the bridge's sign-in page an SP sent the browser to."""
    assert page.status_code == 200, page.text[:300]
    assert page.url.startswith(env.bridge.url + "/login?request="), page.url
    return client.post(env.bridge.url + "/login",
                       data={**form_fields(page.text), "username": user, "password": password})


@pytest.fixture(scope="package")
def saml_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlEnv]:
    """One bridge (gunicorn, 2 workers) and three SPs for the whole SAML test package."""
    workdir = tmp_path_factory.mktemp("saml")
    config = write_config(workdir / "bridge")
    prepare(config, USERS)
    add_mallory(config)
    keys = {name: make_keypair(f"{name} SP") for name in ("onelogin", "encrypted", "pysaml2")}
    with live_bridge(config) as bridge:
        metadata = requests.get(bridge.url + "/saml/metadata", timeout=10)
        assert metadata.status_code == 200
        idp_metadata = metadata.text
        onelogin = OneLoginSp(idp_metadata, keys["onelogin"])
        encrypted = OneLoginSp(
            idp_metadata, keys["encrypted"], encrypted=True, want_messages_signed=True
        )
        pysaml2 = PySaml2Sp(idp_metadata, keys["pysaml2"], workdir / "pysaml2")
        try:
            for sp, party_id in ((onelogin, "onelogin"), (encrypted, "encrypted"),
                                 (pysaml2, "pysaml2")):
                register(workdir, config, sp, party_id)
                set_release(config, party_id, RELEASE)
            # The encrypted SP also wants its Response signed (wantMessagesSigned).
            env = SamlEnv(bridge, idp_metadata, onelogin, encrypted, pysaml2, workdir, keys)
            registry = env.registry()
            party = registry.get("encrypted")
            document = registry.store.get_document("relying-party", "encrypted")
            registry.save(party.model_copy(update={"sign_response": True}), document.version)
            registry.store.close()
            yield env
        finally:
            for sp in (onelogin, encrypted, pysaml2):
                sp.server.stop()
