"""Fixtures for the OIDC provider tests: one live bridge with a set of registered clients."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import USERS
from tests.support import LiveBridge, browser_client, live_bridge, prepare, sign_in, write_config

CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: tests read the Location header
LOGOUT_CALLBACK = "https://rp.example.test/logged-out"
RELEASE = [
    {"type": "attribute", "name": "preferred_username", "from": "username", "scopes": ["profile"]},
    {"type": "attribute", "name": "name", "from": "display_name", "scopes": ["profile"]},
    {"type": "attribute", "name": "email", "from": "email", "scopes": ["email"]},
    {"type": "groups", "name": "groups", "scopes": ["groups"]},
]


@dataclass
class Client:
    """A registered test client and its secret (None for public / private_key_jwt clients)."""

    client_id: str
    secret: str | None
    redirect_uri: str = CALLBACK
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provider:
    """The live bridge, its discovery document and the registered clients."""

    live: LiveBridge
    meta: dict[str, Any]
    clients: dict[str, Client]
    assertion_key: ec.EllipticCurvePrivateKey

    @property
    def url(self) -> str:
        """Base URL (the issuer)."""
        return self.live.url

    def client(self, name: str) -> Client:
        """A registered client by id."""
        return self.clients[name]


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def location_params(response: requests.Response) -> dict[str, str]:
    """The query parameters of a redirect's Location."""
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    return {k: v[0] for k, v in query.items()}


def register(store_path: Path, parties: list[dict[str, Any]]) -> None:
    """Save relying parties straight into the bridge's store (as `bridge rp add-oidc` does)."""
    from bridge.config import load_config
    from bridge.relying_parties import OidcRelyingParty, RelyingPartyRegistry
    from bridge.store import open_store

    config = load_config(store_path)
    store = open_store(config.store)
    registry = RelyingPartyRegistry(store, [])
    for data in parties:
        registry.save(OidcRelyingParty.model_validate(data))
    store.close()


def _party(client_id: str, secret: str | None, **settings: Any) -> dict[str, Any]:
    from bridge.frontends.oidc.clients import secret_digest

    return {
        "id": client_id,
        "name": client_id.title(),
        "protocol": "oidc",
        "client_id": client_id,
        "redirect_uris": [CALLBACK],
        "client_secret_sha256": secret_digest(secret) if secret else None,
        "release": RELEASE,
        "scopes": ["openid", "profile", "email", "groups", "offline_access", "api.read"],
        **settings,
    }


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """A bridge under gunicorn with clients of every kind the tests need."""
    path = write_config(tmp_path_factory.mktemp("oidc") / "bridge", oidc={"code_seconds": 60})
    prepare(path, USERS)
    assertion_key = ec.generate_private_key(ec.SECP256R1())
    public_jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(assertion_key.public_key()))
    public_jwk.update({"kid": "client-key-1", "use": "sig", "alg": "ES256"})
    secrets_by_id = {
        name: secrets.token_urlsafe(32)
        for name in ("web", "web-post", "daemon", "rs", "rsa-web", "exchanger")
    }
    parties = [
        _party("web", secrets_by_id["web"], grant_types=["authorization_code", "refresh_token"],
               post_logout_redirect_uris=[LOGOUT_CALLBACK]),
        _party("web-post", secrets_by_id["web-post"], auth_method="client_secret_post",
               grant_types=["authorization_code", "refresh_token"]),
        _party("rsa-web", secrets_by_id["rsa-web"], id_token_signed_response_alg="RS256",
               grant_types=["authorization_code"]),
        _party("spa", None, public=True, auth_method="none",
               grant_types=["authorization_code", "refresh_token"]),
        _party("daemon", secrets_by_id["daemon"], grant_types=["client_credentials"],
               redirect_uris=[], access_token_audience="https://api.example.test"),
        _party("rs", secrets_by_id["rs"], grant_types=["client_credentials"], redirect_uris=[],
               access_token_audience="https://api.example.test"),
        _party("exchanger", secrets_by_id["exchanger"], redirect_uris=[],
               grant_types=["client_credentials",
                            "urn:ietf:params:oauth:grant-type:token-exchange"],
               access_token_audience="https://api.example.test",
               token_exchange_audiences=["https://downstream.example.test"]),
        _party("pkjwt", None, auth_method="private_key_jwt", jwks={"keys": [public_jwk]},
               grant_types=["authorization_code", "client_credentials"]),
    ]
    register(path, parties)
    with live_bridge(path) as live:
        meta = requests.get(live.url + "/.well-known/openid-configuration", timeout=10).json()
        clients = {p["client_id"]: Client(p["client_id"], secrets_by_id.get(p["client_id"]))
                   for p in parties}
        yield Provider(live, meta, clients, assertion_key)


@pytest.fixture(scope="session")
def jwks_client(provider: Provider) -> pyjwt.PyJWKClient:
    """PyJWT's JWKS client pointed at the bridge's jwks_uri."""
    return pyjwt.PyJWKClient(provider.meta["jwks_uri"], cache_keys=False)


def verify(jwks: pyjwt.PyJWKClient, token: str, audience: str, issuer: str,
           typ: str | None = None) -> dict[str, Any]:
    """Verify a token with PyJWT against the JWKS; check typ when given."""
    key = jwks.get_signing_key_from_jwt(token)
    header = pyjwt.get_unverified_header(token)
    if typ is not None:
        assert header["typ"] == typ
    return pyjwt.decode(
        token, key.key, algorithms=["ES256", "RS256"], audience=audience, issuer=issuer,
        options={"require": ["exp", "iat", "iss", "sub", "aud"]},
    )


@pytest.fixture
def browser(provider: Provider) -> requests.Session:
    """A browser signed in as alice."""
    client = browser_client()
    response = sign_in(client, provider.url, "alice", USERS["alice"])
    assert response.status_code == 200, response.status_code
    return client


def authorize(browser: requests.Session, provider: Provider, client: str = "web",
              method: str = "GET", **params: str) -> requests.Response:
    """Send an authorization request (no redirects followed)."""
    query = {"response_type": "code", "client_id": client, "redirect_uri": CALLBACK,
             "scope": "openid", "state": secrets.token_urlsafe(8)}
    query.update(params)
    query = {k: v for k, v in query.items() if v is not None}
    endpoint = provider.meta["authorization_endpoint"]
    if method == "POST":
        return browser.post(endpoint, data=query, allow_redirects=False)
    return browser.get(endpoint, params=query, allow_redirects=False)


def code_for(browser: requests.Session, provider: Provider, client: str = "web",
             **params: str) -> tuple[str, str, dict[str, str]]:
    """Run an authorization request with PKCE; return (code, verifier, redirect params)."""
    verifier, challenge = pkce_pair()
    params.setdefault("code_challenge", challenge)
    params.setdefault("code_challenge_method", "S256")
    response = authorize(browser, provider, client, **params)
    got = location_params(response)
    assert "code" in got, got
    return got["code"], verifier, got


def redeem(provider: Provider, code: str, verifier: str | None, client: str = "web",
           redirect_uri: str = CALLBACK) -> requests.Response:
    """Exchange a code at the token endpoint with the client's registered authentication."""
    registered = provider.client(client)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier:
        data["code_verifier"] = verifier
    auth = None
    if client == "web-post":
        data.update(client_id=client, client_secret=registered.secret or "")
    elif registered.secret:
        auth = (client, registered.secret)
    else:
        data["client_id"] = client
    return requests.post(provider.meta["token_endpoint"], data=data, auth=auth, timeout=10)


def tokens_for(browser: requests.Session, provider: Provider, client: str = "web",
               **params: str) -> dict[str, Any]:
    """A full code flow; returns the token response."""
    code, verifier, _ = code_for(browser, provider, client, **params)
    response = redeem(provider, code, verifier, client)
    assert response.status_code == 200, response.text
    return response.json()
