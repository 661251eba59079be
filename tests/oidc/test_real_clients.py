"""Independent OAuth clients against a live bridge; every token verified with PyJWT."""

from __future__ import annotations

import concurrent.futures
import time
from urllib.parse import parse_qs, urlsplit

import jwt as pyjwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from requests_oauthlib import OAuth2Session as OAuthlibSession

from tests.oidc.conftest import (
    CALLBACK,
    Provider,
    code_for,
    location_params,
    pkce_pair,
    redeem,
    verify,
)
from tests.support import run_cli


def test_authlib_client_code_pkce_refresh(provider: Provider, browser, jwks_client) -> None:
    """Authlib's OAuth2Session: code + PKCE S256, ID token and access token, then refresh."""
    web = provider.client("web")
    session = OAuth2Session(
        web.client_id, web.secret, scope="openid profile email", redirect_uri=CALLBACK,
        code_challenge_method="S256",
    )
    verifier, _ = pkce_pair()
    url, state = session.create_authorization_url(
        provider.meta["authorization_endpoint"], code_verifier=verifier, nonce="n-0S6_WzA2Mj"
    )
    response = browser.get(url, allow_redirects=False)
    callback = response.headers["Location"]
    assert parse_qs(urlsplit(callback).query)["iss"] == [provider.url]
    token = session.fetch_token(
        provider.meta["token_endpoint"], authorization_response=callback, code_verifier=verifier
    )
    id_token = verify(jwks_client, token["id_token"], "web", provider.url)
    assert id_token["nonce"] == "n-0S6_WzA2Mj"
    assert id_token["azp"] == "web"
    assert id_token["email"] == "alice@example.test"
    assert pyjwt.get_unverified_header(token["id_token"])["alg"] == "ES256"
    access = verify(jwks_client, token["access_token"], "web", provider.url, typ="at+jwt")
    assert access["client_id"] == "web" and access["sub"] == id_token["sub"]
    assert set(access["scope"].split()) == {"openid", "profile", "email"}
    assert response.headers.get("Cache-Control") == "no-store"

    userinfo = session.get(provider.meta["userinfo_endpoint"]).json()
    assert userinfo == {"sub": id_token["sub"], "preferred_username": "alice", "name": "Alice",
                        "email": "alice@example.test"}

    refreshed = session.refresh_token(provider.meta["token_endpoint"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    again = verify(jwks_client, refreshed["access_token"], "web", provider.url, typ="at+jwt")
    assert again["sub"] == id_token["sub"]


def test_authlib_client_credentials(provider: Provider, jwks_client) -> None:
    """Authlib's client: client_credentials with client_secret_basic."""
    daemon = provider.client("daemon")
    session = OAuth2Session(daemon.client_id, daemon.secret, scope="api.read")
    token = session.fetch_token(provider.meta["token_endpoint"], grant_type="client_credentials")
    claims = verify(jwks_client, token["access_token"], "https://api.example.test", provider.url,
                    typ="at+jwt")
    assert claims["sub"] == "daemon" and claims["client_id"] == "daemon"
    assert claims["scope"] == "api.read"
    assert "refresh_token" not in token
    assert claims["exp"] - claims["iat"] == token["expires_in"] == 3600


def test_requests_oauthlib_code_flow(provider: Provider, browser, jwks_client,
                                     monkeypatch) -> None:
    """requests-oauthlib: code flow with client_secret_post and PKCE."""
    # oauthlib insists on https; this bridge is on http://localhost (the msal test uses TLS).
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    client = provider.client("web-post")
    session = OAuthlibSession(client.client_id, redirect_uri=CALLBACK,
                              scope=["openid", "email"], pkce="S256")
    url, state = session.authorization_url(provider.meta["authorization_endpoint"])
    callback = browser.get(url, allow_redirects=False).headers["Location"]
    token = session.fetch_token(
        provider.meta["token_endpoint"], authorization_response=callback,
        client_secret=client.secret, include_client_id=True,
    )
    claims = verify(jwks_client, token["id_token"], "web-post", provider.url)
    assert claims["email"] == "alice@example.test"
    assert "name" not in claims  # profile was not asked for


def test_twenty_parallel_redemptions_one_wins(provider: Provider, browser) -> None:
    """Twenty concurrent redemptions of one code: exactly one token response (checklist O04)."""
    code, verifier, _ = code_for(browser, provider)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: redeem(provider, code, verifier), range(20)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [400] * 19
    assert all(r.json()["error"] == "invalid_grant" for r in results if r.status_code == 400)


def test_rs256_id_token_for_a_client_that_asks(provider: Provider, browser, jwks_client) -> None:
    """ID tokens are ES256 by default and RS256 for a client registered for it."""
    code, verifier, _ = code_for(browser, provider, "rsa-web")
    token = redeem(provider, code, verifier, "rsa-web").json()
    assert pyjwt.get_unverified_header(token["id_token"])["alg"] == "RS256"
    verify(jwks_client, token["id_token"], "rsa-web", provider.url)


def test_public_client_with_pkce(provider: Provider, browser, jwks_client) -> None:
    """A public client redeems with its verifier and no secret."""
    code, verifier, _ = code_for(browser, provider, "spa", scope="openid offline_access")
    token = redeem(provider, code, verifier, "spa").json()
    verify(jwks_client, token["id_token"], "spa", provider.url)
    refreshed = requests.post(provider.meta["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"],
        "client_id": "spa"}, timeout=10)
    assert refreshed.status_code == 200, refreshed.text


def test_token_exchange_narrows_audience_and_scope(provider: Provider, browser,
                                                   jwks_client) -> None:
    """RFC 8693: a resource server trades a user's token for a narrower downstream token."""
    web = provider.client("web")
    code, verifier, _ = code_for(browser, provider, scope="openid profile api.read")
    user_token = redeem(provider, code, verifier).json()["access_token"]
    exchanger = provider.client("exchanger")
    # The user's token was issued to "web" for "web": the exchanger may not trade it.
    refused = requests.post(provider.meta["token_endpoint"], auth=(
        exchanger.client_id, exchanger.secret), data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": user_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "https://downstream.example.test"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    # A token for the exchanger's own API (via client credentials as the subject) works.
    session = OAuth2Session(exchanger.client_id, exchanger.secret, scope="api.read")
    subject = session.fetch_token(provider.meta["token_endpoint"],
                                  grant_type="client_credentials")["access_token"]
    exchanged = requests.post(provider.meta["token_endpoint"], auth=(
        exchanger.client_id, exchanger.secret), data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "https://downstream.example.test", "scope": "api.read"}, timeout=10)
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = verify(jwks_client, body["access_token"], "https://downstream.example.test",
                    provider.url, typ="at+jwt")
    original = pyjwt.decode(subject, options={"verify_signature": False})
    assert claims["exp"] <= original["exp"]
    assert claims["act"] == {"sub": "exchanger"}
    # Widening the scope or choosing an unregistered audience is refused.
    for extra, error in (({"scope": "api.read openid"}, "invalid_scope"),
                         ({"audience": "https://elsewhere.example.test"}, "invalid_grant")):
        data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": subject,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "audience": "https://downstream.example.test", **extra}
        answer = requests.post(provider.meta["token_endpoint"], data=data, timeout=10,
                               auth=(exchanger.client_id, exchanger.secret))
        assert answer.status_code == 400 and answer.json()["error"] == error
    assert web.client_id == "web"


def test_private_key_jwt_client_credentials(provider: Provider, jwks_client) -> None:
    """private_key_jwt with an assertion signed by the client's registered key."""
    now = int(time.time())
    claims = {"iss": "pkjwt", "sub": "pkjwt", "aud": provider.meta["token_endpoint"],
              "iat": now, "exp": now + 60, "jti": f"jti-{now}-ok"}
    assertion = pyjwt.encode(claims, provider.assertion_key, algorithm="ES256",
                             headers={"kid": "client-key-1"})
    data = {"grant_type": "client_credentials", "client_id": "pkjwt",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    first = requests.post(provider.meta["token_endpoint"], data=data, timeout=10)
    assert first.status_code == 200, first.text
    verify(jwks_client, first.json()["access_token"], "pkjwt", provider.url, typ="at+jwt")
    replay = requests.post(provider.meta["token_endpoint"], data=data, timeout=10)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"


def test_cli_add_oidc_prints_secret_once_and_it_works(provider: Provider) -> None:
    """`bridge rp add-oidc` registers a client whose printed secret works at the token endpoint."""
    result = run_cli("rp", "add-oidc", "--config", str(provider.live.config_path),
                     "--client-id", "cli-daemon", "--grant", "client_credentials",
                     "--scope", "api.read")
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip().splitlines()[-1]
    assert len(secret) >= 43
    shown = run_cli("rp", "show", "--config", str(provider.live.config_path), "cli-daemon")
    assert secret not in shown.stdout and "client_secret_sha256" in shown.stdout
    token = requests.post(provider.meta["token_endpoint"], auth=("cli-daemon", secret),
                          data={"grant_type": "client_credentials", "scope": "api.read"},
                          timeout=10)
    assert token.status_code == 200, token.text
    duplicate = run_cli("rp", "add-oidc", "--config", str(provider.live.config_path),
                        "--client-id", "cli-daemon", "--grant", "client_credentials")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    bad = run_cli("rp", "add-oidc", "--config", str(provider.live.config_path),
                  "--client-id", "cli-bad", "--redirect-uri", "https://a.test/cb#frag")
    assert bad.returncode == 2 and "fragment" in bad.stderr


def test_location_helper_reads_errors(provider: Provider, browser) -> None:
    """Sanity check of the helper: an error redirect keeps state and iss."""
    response = browser.get(provider.meta["authorization_endpoint"], params={
        "response_type": "code", "client_id": "web", "redirect_uri": CALLBACK,
        "scope": "openid", "state": "s1", "code_challenge": "x" * 43,
        "code_challenge_method": "plain"}, allow_redirects=False)
    params = location_params(response)
    assert params == {"error": "invalid_request", "state": "s1", "iss": provider.url,
                      "error_description": params["error_description"]}
