"""Time-dependent behaviour, in-process with a controllable clock (no waiting).

The store and the provider share one fake clock; sign-in and the token endpoint go through
Flask's test client exactly as over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from tests.conftest import USERS
from tests.oidc.conftest import CALLBACK, RELEASE, pkce_pair
from tests.support import form_fields, prepare, write_config

SECRET = "clock-test-secret-" + "y" * 30


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward."""
        self.now += seconds


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[FlaskClient, FakeClock]]:
    """The app in-process with a fake clock driving the store and the provider."""
    from bridge.app import create_app
    from bridge.config import load_config
    from bridge.frontends.oidc.clients import secret_digest
    from bridge.store.sqlite import SQLiteStore
    from tests.oidc.conftest import register

    path = write_config(tmp_path / "bridge")
    prepare(path, USERS)
    register(path, [{
        "id": "web", "name": "Web", "protocol": "oidc", "client_id": "web",
        "redirect_uris": [CALLBACK], "client_secret_sha256": secret_digest(SECRET),
        "release": RELEASE, "grant_types": ["authorization_code", "refresh_token"],
    }])
    config = load_config(path)
    clock = FakeClock()
    store = SQLiteStore(config.store.path, clock=clock)
    app = create_app(config, store=store)
    app.extensions["bridge-oidc"].clock = clock
    yield app.test_client(), clock
    store.close()


def _code(client: FlaskClient) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    response = client.get("/oauth2/authorize", query_string={
        "response_type": "code", "client_id": "web", "redirect_uri": CALLBACK,
        "scope": "openid email", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    if urlsplit(response.headers["Location"]).path == "/login":
        page = client.get(response.headers["Location"])
        response = client.post("/login", data={
            **form_fields(page.get_data(as_text=True)), "username": "alice",
            "password": USERS["alice"]})
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    return query["code"][0], verifier


def _redeem(client: FlaskClient, code: str, verifier: str):
    return client.post("/oauth2/token", auth=("web", SECRET), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
        "code_verifier": verifier})


def test_oidcc_codereuse_30seconds(clocked) -> None:
    """oidcc-codereuse-30seconds: a code reused 30 s later fails and revokes what it issued."""
    client, clock = clocked
    code, verifier = _code(client)
    first = _redeem(client, code, verifier)
    assert first.status_code == 200
    access = first.json["access_token"]
    assert client.get("/oauth2/userinfo", headers={
        "Authorization": f"Bearer {access}"}).status_code == 200
    clock.advance(30)
    again = _redeem(client, code, verifier)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    revoked = client.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert revoked.status_code == 401 and revoked.json["error"] == "invalid_token"
    refresh = client.post("/oauth2/token", auth=("web", SECRET), data={
        "grant_type": "refresh_token", "refresh_token": first.json["refresh_token"]})
    assert refresh.status_code == 400 and refresh.json["error"] == "invalid_grant"


def test_O04_code_expires_after_its_lifetime(clocked) -> None:
    """O04: a code is good for about 60 s; at 61 s it is invalid_grant."""
    client, clock = clocked
    code, verifier = _code(client)
    clock.advance(61)
    late = _redeem(client, code, verifier)
    assert late.status_code == 400 and late.json["error"] == "invalid_grant"
    fresh, fresh_verifier = _code(client)
    clock.advance(59)
    assert _redeem(client, fresh, fresh_verifier).status_code == 200


def test_access_token_expiry_is_enforced(clocked) -> None:
    """An access token stops working at userinfo once its exp has passed."""
    client, clock = clocked
    code, verifier = _code(client)
    access = _redeem(client, code, verifier).json["access_token"]
    clock.advance(3601)
    answer = client.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert answer.status_code == 401


def test_O11_rotated_key_stays_published_and_valid(clocked, tmp_path: Path) -> None:
    """O11: after a key rotation the old key stays in the JWKS and its tokens still verify."""
    from bridge import keys
    from bridge.app import create_app
    from bridge.config import load_config

    client, clock = clocked
    code, verifier = _code(client)
    access = _redeem(client, code, verifier).json["access_token"]
    import jwt as pyjwt

    old_kid = pyjwt.get_unverified_header(access)["kid"]
    config = load_config(tmp_path / "bridge" / "bridge.yaml")
    keys.rotate(config.keys.dir)
    # A restarted node loads the rotated ring.
    restarted = create_app(config, store=client.application.extensions["bridge"].store)
    restarted.extensions["bridge-oidc"].clock = clock
    fresh = restarted.test_client()
    published = [k["kid"] for k in fresh.get("/oauth2/jwks").json["keys"]]
    assert old_kid in published and len(published) == len(set(published))
    answer = fresh.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert answer.status_code == 200
    code2, verifier2 = _code(fresh)
    new_access = fresh.post("/oauth2/token", auth=("web", SECRET), data={
        "grant_type": "authorization_code", "code": code2, "redirect_uri": CALLBACK,
        "code_verifier": verifier2}).json["access_token"]
    assert pyjwt.get_unverified_header(new_access)["kid"] != old_kid
