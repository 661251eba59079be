"""One test per module of the OpenID conformance suite's Basic OP and Config OP plans.

Each test is named after the module id (oidcc-server -> test_oidcc_server) and reproduces what
that module checks, over HTTP against the live bridge, with PyJWT verifying what comes back.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import jwt as pyjwt
import requests

from tests.conftest import USERS
from tests.oidc.conftest import (
    CALLBACK,
    Provider,
    authorize,
    code_for,
    location_params,
    pkce_pair,
    redeem,
    tokens_for,
    verify,
)
from tests.support import browser_client, form_fields

AUTH_CONTEXT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


def _id_token(provider: Provider, jwks, token: dict, client: str = "web") -> dict:
    return verify(jwks, token["id_token"], client, provider.url)


def _userinfo(provider: Provider, access_token: str, how: str = "get") -> requests.Response:
    url = provider.meta["userinfo_endpoint"]
    if how == "get":
        return requests.get(url, headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    if how == "post-header":
        return requests.post(url, headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    return requests.post(url, data={"access_token": access_token}, timeout=10)


def _sign_in_at(browser: requests.Session, base: str, page: requests.Response,
                user: str = "alice") -> requests.Response:
    """Complete the sign-in form that an authorization request was redirected to."""
    assert page.status_code == 200 and "csrf_token" in page.text, page.status_code
    return browser.post(base + "/login", allow_redirects=False, data={
        **form_fields(page.text), "username": user, "password": USERS[user]})


# -- Basic OP ---------------------------------------------------------------------------------


def test_oidcc_server(provider: Provider, browser, jwks_client) -> None:
    """oidcc-server: code flow; ID token claims, nonce, at_hash, state and iss in the redirect."""
    code, verifier, params = code_for(browser, provider, state="xyz-state", nonce="abc-nonce")
    assert params["state"] == "xyz-state" and params["iss"] == provider.url
    assert len(code) >= 43  # >= 256 bits of base64url
    response = redeem(provider, code, verifier)
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()
    assert token["token_type"] == "Bearer"
    claims = _id_token(provider, jwks_client, token)
    assert claims["iss"] == provider.meta["issuer"] == provider.url
    assert claims["aud"] == "web" and claims["azp"] == "web"
    assert claims["nonce"] == "abc-nonce"
    assert claims["iat"] <= time.time() + 5 < claims["exp"]
    assert claims["acr"] == AUTH_CONTEXT and claims["amr"] == ["pwd"]
    alg = pyjwt.get_unverified_header(token["id_token"])["alg"]
    assert pyjwt.get_algorithm_by_name(alg)  # a real algorithm
    import base64
    import hashlib

    digest = hashlib.sha256(token["access_token"].encode()).digest()
    expected = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert claims["at_hash"] == expected


def test_oidcc_response_type_missing(provider: Provider, browser) -> None:
    """oidcc-response-type-missing: an error redirected to the client, with state and iss."""
    params = location_params(authorize(browser, provider, response_type=None, state="s-rt"))
    assert params["error"] in ("unsupported_response_type", "invalid_request")
    assert params["state"] == "s-rt" and params["iss"] == provider.url
    assert "code" not in params


def test_oidcc_idtoken_signature(provider: Provider, browser, jwks_client) -> None:
    """oidcc-idtoken-signature: signed with a published key named by kid."""
    token = tokens_for(browser, provider)
    header = pyjwt.get_unverified_header(token["id_token"])
    kids = {k["kid"] for k in requests.get(provider.meta["jwks_uri"], timeout=10).json()["keys"]}
    assert header["kid"] in kids and header["alg"] == "ES256"
    _id_token(provider, jwks_client, token)


def test_oidcc_idtoken_unsigned(provider: Provider) -> None:
    """oidcc-idtoken-unsigned: unsigned ID tokens are not offered (the module is skipped)."""
    algs = provider.meta["id_token_signing_alg_values_supported"]
    assert "none" not in [a.lower() for a in algs]


def test_oidcc_userinfo_get(provider: Provider, browser) -> None:
    """oidcc-userinfo-get: GET with the bearer token in the header."""
    token = tokens_for(browser, provider, scope="openid profile")
    body = _userinfo(provider, token["access_token"]).json()
    assert body["sub"] == pyjwt.decode(token["id_token"], options={"verify_signature": False})[
        "sub"]
    assert body["name"] == "Alice"


def test_oidcc_userinfo_post_header(provider: Provider, browser) -> None:
    """oidcc-userinfo-post-header: POST with the bearer token in the header."""
    token = tokens_for(browser, provider, scope="openid email")
    response = _userinfo(provider, token["access_token"], "post-header")
    assert response.status_code == 200 and response.json()["email"] == "alice@example.test"


def test_oidcc_userinfo_post_body(provider: Provider, browser) -> None:
    """oidcc-userinfo-post-body: POST with the token as a form parameter."""
    token = tokens_for(browser, provider, scope="openid email")
    response = _userinfo(provider, token["access_token"], "post-body")
    assert response.status_code == 200 and response.json()["email"] == "alice@example.test"


def test_oidcc_ensure_request_without_nonce_succeeds_for_code_flow(provider: Provider, browser,
                                                                   jwks_client) -> None:
    """oidcc-ensure-request-without-nonce-succeeds-for-code-flow."""
    token = tokens_for(browser, provider)
    assert "nonce" not in _id_token(provider, jwks_client, token)


def _scope_claims(provider: Provider, browser, scope: str) -> dict:
    token = tokens_for(browser, provider, scope=scope)
    return _userinfo(provider, token["access_token"]).json()


def test_oidcc_scope_profile(provider: Provider, browser) -> None:
    """oidcc-scope-profile: profile claims, nothing from other scopes."""
    claims = _scope_claims(provider, browser, "openid profile")
    assert claims["name"] == "Alice" and claims["preferred_username"] == "alice"
    assert "email" not in claims and "groups" not in claims


def test_oidcc_scope_email(provider: Provider, browser) -> None:
    """oidcc-scope-email: email claims only."""
    claims = _scope_claims(provider, browser, "openid email")
    assert claims == {"sub": claims["sub"], "email": "alice@example.test"}


def test_oidcc_scope_address(provider: Provider, browser) -> None:
    """oidcc-scope-address: an unsupported scope is dropped, the request still succeeds."""
    token = tokens_for(browser, provider, scope="openid address")
    assert token["scope"] == "openid"


def test_oidcc_scope_phone(provider: Provider, browser) -> None:
    """oidcc-scope-phone: an unsupported scope is dropped, the request still succeeds."""
    token = tokens_for(browser, provider, scope="openid phone")
    assert token["scope"] == "openid"


def test_oidcc_scope_all(provider: Provider, browser) -> None:
    """oidcc-scope-all: every scope at once; what the rules release for each is returned."""
    claims = _scope_claims(provider, browser, "openid profile email address phone groups")
    assert claims["email"] == "alice@example.test" and claims["name"] == "Alice"
    assert sorted(claims["groups"]) == ["staff", "team-alice"]


def test_oidcc_ensure_other_scope_order_succeeds(provider: Provider, browser) -> None:
    """oidcc-ensure-other-scope-order-succeeds: `email openid` works like `openid email`."""
    token = tokens_for(browser, provider, scope="email openid")
    assert set(token["scope"].split()) == {"openid", "email"} and "id_token" in token


def test_oidcc_display_page(provider: Provider, browser) -> None:
    """oidcc-display-page: display=page is accepted."""
    assert "code" in location_params(authorize(browser, provider, display="page"))


def test_oidcc_display_popup(provider: Provider, browser) -> None:
    """oidcc-display-popup: display=popup is accepted."""
    assert "code" in location_params(authorize(browser, provider, display="popup"))


def test_oidcc_prompt_login(provider: Provider, browser, jwks_client) -> None:
    """oidcc-prompt-login: a signed-in user must sign in again; auth_time moves forward."""
    first = _id_token(provider, jwks_client, tokens_for(browser, provider))
    time.sleep(1.1)  # auth_time has one-second resolution
    verifier, challenge = pkce_pair()
    page = authorize(browser, provider, prompt="login", code_challenge=challenge,
                     code_challenge_method="S256")
    assert page.status_code == 302 and urlsplit(page.headers["Location"]).path == "/login"
    answer = _sign_in_at(browser, provider.url,
                         browser.get(provider.url + page.headers["Location"]))
    code = location_params(answer)["code"]
    second = _id_token(provider, jwks_client, redeem(provider, code, verifier).json())
    assert second["auth_time"] > first["auth_time"] and second["sub"] == first["sub"]


def test_oidcc_prompt_none_not_logged_in(provider: Provider) -> None:
    """oidcc-prompt-none-not-logged-in: login_required at the client, with state and iss."""
    params = location_params(authorize(browser_client(), provider, prompt="none", state="pn"))
    assert params == {"error": "login_required", "state": "pn", "iss": provider.url,
                      **({"error_description": params["error_description"]}
                         if "error_description" in params else {})}


def test_oidcc_prompt_none_logged_in(provider: Provider, browser, jwks_client) -> None:
    """oidcc-prompt-none-logged-in: a code at once, no sign-in page."""
    token = tokens_for(browser, provider, prompt="none")
    assert _id_token(provider, jwks_client, token)["sub"]


def test_oidcc_max_age_1(provider: Provider, browser, jwks_client) -> None:
    """oidcc-max-age-1: a sign-in older than one second must be repeated; auth_time returned."""
    time.sleep(1.5)  # the session must be older than max_age
    verifier, challenge = pkce_pair()
    page = authorize(browser, provider, max_age="1", code_challenge=challenge,
                     code_challenge_method="S256")
    assert urlsplit(page.headers["Location"]).path == "/login"
    code = location_params(_sign_in_at(browser, provider.url,
                                       browser.get(provider.url + page.headers["Location"])))[
        "code"]
    claims = _id_token(provider, jwks_client, redeem(provider, code, verifier).json())
    assert time.time() - claims["auth_time"] < 30


def test_oidcc_max_age_10000(provider: Provider, browser, jwks_client) -> None:
    """oidcc-max-age-10000: the session is recent enough; auth_time is in the ID token."""
    claims = _id_token(provider, jwks_client, tokens_for(browser, provider, max_age="10000"))
    assert isinstance(claims["auth_time"], int)


def test_oidcc_ensure_request_with_unknown_parameter_succeeds(provider: Provider,
                                                              browser) -> None:
    """oidcc-ensure-request-with-unknown-parameter-succeeds."""
    assert "code" in location_params(authorize(browser, provider, extra_param="foobar"))


def test_oidcc_id_token_hint(provider: Provider, browser, jwks_client) -> None:
    """oidcc-id-token-hint: prompt=none with the user's ID token as hint succeeds."""
    first = tokens_for(browser, provider)
    token = tokens_for(browser, provider, prompt="none", id_token_hint=first["id_token"])
    assert _id_token(provider, jwks_client, token)["sub"] == _id_token(
        provider, jwks_client, first)["sub"]
    # A hint for someone else with prompt=none: the current session cannot answer.
    bob = browser_client()
    assert _sign_in_at(bob, provider.url, bob.get(provider.url + "/login"), "bob")
    params = location_params(authorize(bob, provider, prompt="none",
                                       id_token_hint=first["id_token"]))
    assert params["error"] == "login_required"


def test_oidcc_login_hint(provider: Provider) -> None:
    """oidcc-login-hint: the sign-in page is prefilled with the hint."""
    browser = browser_client()
    page = authorize(browser, provider, login_hint="alice@example.test")
    html = browser.get(provider.url + page.headers["Location"]
                       if page.headers["Location"].startswith("/")
                       else page.headers["Location"]).text
    assert re.search(r'name="username"[^>]*value="alice@example.test"', html) or \
        'value="alice@example.test"' in html


def test_oidcc_ui_locales(provider: Provider, browser) -> None:
    """oidcc-ui-locales: accepted."""
    assert "code" in location_params(authorize(browser, provider, ui_locales="se"))


def test_oidcc_claims_locales(provider: Provider, browser) -> None:
    """oidcc-claims-locales: accepted."""
    assert "code" in location_params(authorize(browser, provider, claims_locales="se"))


def test_oidcc_ensure_request_with_acr_values_succeeds(provider: Provider, browser) -> None:
    """oidcc-ensure-request-with-acr-values-succeeds."""
    assert "code" in location_params(authorize(browser, provider, acr_values="1 2"))


def test_oidcc_codereuse(provider: Provider, browser) -> None:
    """oidcc-codereuse: the second redemption of a code fails with invalid_grant."""
    code, verifier, _ = code_for(browser, provider)
    assert redeem(provider, code, verifier).status_code == 200
    again = redeem(provider, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


# oidcc-codereuse-30seconds needs 30 seconds to pass: it runs in-process with a controllable
# clock in test_codereuse_clock.py (test_oidcc_codereuse_30seconds).


def test_oidcc_ensure_registered_redirect_uri(provider: Provider, browser) -> None:
    """oidcc-ensure-registered-redirect-uri: an error page at the bridge, no redirect."""
    response = authorize(browser, provider, redirect_uri="https://attacker.example/cb")
    assert response.status_code == 400 and "Location" not in response.headers
    assert "not registered" in response.text


def test_oidcc_ensure_post_request_succeeds(provider: Provider, browser) -> None:
    """oidcc-ensure-post-request-succeeds: the authorization request as a form POST."""
    verifier, challenge = pkce_pair()
    response = authorize(browser, provider, method="POST", code_challenge=challenge,
                         code_challenge_method="S256")
    code = location_params(response)["code"]
    assert redeem(provider, code, verifier).status_code == 200


def test_oidcc_server_client_secret_post(provider: Provider, browser, jwks_client) -> None:
    """oidcc-server-client-secret-post: the code flow with client_secret_post."""
    token = tokens_for(browser, provider, "web-post")
    _id_token(provider, jwks_client, token, "web-post")


def test_oidcc_request_uri_unsigned_supported_correctly_or_rejected_as_unsupported(
    provider: Provider, browser
) -> None:
    """oidcc-request-uri-unsigned-...: request_uri is rejected as unsupported."""
    params = location_params(authorize(browser, provider, request_uri="https://rp.test/r"))
    assert params["error"] == "request_uri_not_supported" and "code" not in params
    assert provider.meta["request_uri_parameter_supported"] is False


def test_oidcc_unsigned_request_object_supported_correctly_or_rejected_as_unsupported(
    provider: Provider, browser
) -> None:
    """oidcc-unsigned-request-object-...: request objects are rejected as unsupported."""
    obj = pyjwt.encode({"client_id": "web", "scope": "openid"}, key="", algorithm="none")
    params = location_params(authorize(browser, provider, request=obj))
    assert params["error"] == "request_not_supported"
    assert provider.meta["request_parameter_supported"] is False


def test_oidcc_claims_essential(provider: Provider, browser) -> None:
    """oidcc-claims-essential: the claims parameter is ignored (not supported), flow succeeds."""
    claims = '{"userinfo":{"name":{"essential":true}}}'
    assert "code" in location_params(authorize(browser, provider, claims=claims))
    assert provider.meta["claims_parameter_supported"] is False


def test_oidcc_ensure_request_object_with_redirect_uri(provider: Provider, browser) -> None:
    """oidcc-ensure-request-object-with-redirect-uri: consistently rejected as unsupported."""
    obj = pyjwt.encode({"redirect_uri": "https://attacker.example/cb"}, key="", algorithm="none")
    params = location_params(authorize(browser, provider, request=obj))
    assert params["error"] == "request_not_supported"


def test_oidcc_refresh_token(provider: Provider, browser, jwks_client) -> None:
    """oidcc-refresh-token: refresh works for its client only; the new token is usable."""
    token = tokens_for(browser, provider, scope="openid offline_access email")
    other = requests.post(provider.meta["token_endpoint"], auth=(
        "web-post", provider.client("web-post").secret or ""), data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]}, timeout=10)
    assert other.status_code == 401  # web-post authenticates with client_secret_post only
    refreshed = requests.post(provider.meta["token_endpoint"], auth=(
        "web", provider.client("web").secret or ""), data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]}, timeout=10)
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert _userinfo(provider, body["access_token"]).json()["email"] == "alice@example.test"


def test_oidcc_ensure_request_with_valid_pkce_succeeds(provider: Provider, browser) -> None:
    """oidcc-ensure-request-with-valid-pkce-succeeds."""
    code, verifier, _ = code_for(browser, provider)
    assert redeem(provider, code, verifier).status_code == 200


# -- Config OP --------------------------------------------------------------------------------


def test_oidcc_discovery_endpoint_verification(provider: Provider) -> None:
    """oidcc-discovery-endpoint-verification: the discovery document is complete and sound."""
    meta = provider.meta
    assert meta["issuer"] == provider.url
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                 "end_session_endpoint", "introspection_endpoint", "revocation_endpoint"):
        assert meta[name].startswith(provider.url + "/"), name
    assert "openid" in meta["scopes_supported"]
    assert meta["response_types_supported"] == ["code"]
    assert "public" in meta["subject_types_supported"]
    assert "RS256" in meta["id_token_signing_alg_values_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "implicit" not in meta["grant_types_supported"]
    assert "password" not in meta["grant_types_supported"]
    keys = requests.get(meta["jwks_uri"], timeout=10).json()["keys"]
    assert keys and all(k["use"] == "sig" and "kid" in k for k in keys)
    oauth = requests.get(provider.url + "/.well-known/oauth-authorization-server",
                         timeout=10).json()
    assert oauth["issuer"] == meta["issuer"] and oauth["token_endpoint"] == meta["token_endpoint"]
    assert CALLBACK.startswith("http://127.0.0.1")
