"""Checklist O01-O12 (security-checklist.md) over HTTP against the live bridge, plus hostile
input at every OIDC endpoint: the answer is a protocol error or a page, never a 500."""

from __future__ import annotations

import base64
import json
import time

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.oidc.conftest import (
    CALLBACK,
    LOGOUT_CALLBACK,
    Provider,
    authorize,
    code_for,
    location_params,
    pkce_pair,
    redeem,
    tokens_for,
)
from tests.support import browser_client

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _token(provider: Provider, data: dict, auth: tuple[str, str] | None = None,
           **kwargs) -> requests.Response:
    return requests.post(provider.meta["token_endpoint"], data=data, auth=auth, timeout=10,
                         **kwargs)


def _web_auth(provider: Provider) -> tuple[str, str]:
    return "web", provider.client("web").secret or ""


@pytest.mark.parametrize("redirect_uri", [
    CALLBACK + "/extra",
    CALLBACK + "/",
    CALLBACK + "?x=1",
    CALLBACK + "#frag",
    CALLBACK.upper(),
    "http://127.0.0.1:9@attacker.test/cb",
    "http://localhost:80@attacker.test/cb",
    "http://127.0.0.1:9/cb%2F..%2Fevil",
    "http://127.0.0.1:9/CB",
    'http://127.0.0.1:9/cb"><script>',
    "http://127.0.0.1:9/cb\\evil",
    "javascript:alert(1)",
    "",
])
def test_O01_redirect_uri_exact_match(provider: Provider, browser, redirect_uri: str) -> None:
    """O01: anything but the registered string is an error page and no redirect."""
    response = authorize(browser, provider, redirect_uri=redirect_uri)
    assert response.status_code == 400 and "Location" not in response.headers
    assert "<script>" not in response.text


def test_O01_loopback_port_may_differ(provider: Provider, browser) -> None:
    """O01: the one exception, a loopback IP literal whose port differs (RFC 8252 7.3)."""
    params = location_params(authorize(browser, provider, redirect_uri="http://127.0.0.1:4711/cb",
                                       code_challenge=pkce_pair()[1],
                                       code_challenge_method="S256"))
    assert "code" in params


@pytest.mark.parametrize("params", [
    {"client_id": "nobody"},
    {"client_id": None},
    {"client_id": "web", "redirect_uri": None},
    {"client_id": "web\x00", "redirect_uri": CALLBACK},
    {"client_id": "x" * 5000},
])
def test_O02_errors_before_validation_are_rendered(provider: Provider, browser,
                                                   params: dict) -> None:
    """O02: without a validated client and redirect_uri, the error is a page."""
    response = authorize(browser, provider, **params)
    assert response.status_code == 400 and "Location" not in response.headers


def test_O02_errors_after_validation_redirect_with_state_and_iss(provider: Provider,
                                                                 browser) -> None:
    """O02: a bad scope-less PKCE request of a valid client goes back with state and iss."""
    params = location_params(authorize(browser, provider, "spa", state="st-1"))
    assert params["error"] == "invalid_request" and params["state"] == "st-1"
    assert params["iss"] == provider.url


def test_O03_pkce(provider: Provider, browser) -> None:
    """O03: plain refused; wrong/missing verifier invalid_grant; verifier without challenge."""
    plain = location_params(authorize(browser, provider, code_challenge="a" * 43,
                                      code_challenge_method="plain"))
    assert plain["error"] == "invalid_request"
    missing_method = location_params(authorize(browser, provider, code_challenge="a" * 43))
    assert missing_method["error"] == "invalid_request"
    code, verifier, _ = code_for(browser, provider)
    wrong = redeem(provider, code, pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    code, verifier, _ = code_for(browser, provider)
    none = redeem(provider, code, None)
    assert none.status_code == 400 and none.json()["error"] == "invalid_grant"
    # Downgrade: a code issued without a challenge, redeemed with a verifier.
    response = authorize(browser, provider)
    code = location_params(response)["code"]
    downgrade = redeem(provider, code, pkce_pair()[0])
    assert downgrade.status_code == 400 and downgrade.json()["error"] == "invalid_request"
    # Public clients must use PKCE at all.
    assert location_params(authorize(browser, provider, "spa"))["error"] == "invalid_request"


def test_O04_code_bound_to_client_and_redirect_uri(provider: Provider, browser) -> None:
    """O04: a code works only for its client and its exact redirect_uri; it is long."""
    code, verifier, _ = code_for(browser, provider)
    assert len(base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))) >= 16
    other = redeem(provider, code, verifier, "web-post")
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    code, verifier, _ = code_for(browser, provider)
    moved = redeem(provider, code, verifier, redirect_uri="http://127.0.0.1:9/other")
    assert moved.status_code == 400 and moved.json()["error"] == "invalid_grant"


def test_O04_reused_code_revokes_issued_tokens(provider: Provider, browser) -> None:
    """O04: redeeming a code twice revokes the access and refresh tokens of the first."""
    code, verifier, _ = code_for(browser, provider)
    first = redeem(provider, code, verifier).json()
    assert redeem(provider, code, verifier).status_code == 400
    userinfo = requests.get(provider.meta["userinfo_endpoint"], timeout=10,
                            headers={"Authorization": f"Bearer {first['access_token']}"})
    assert userinfo.status_code == 401
    refreshed = _token(provider, {"grant_type": "refresh_token",
                                  "refresh_token": first["refresh_token"]}, _web_auth(provider))
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"


def test_O05_refresh_rotation_reuse_revokes_family(provider: Provider, browser) -> None:
    """O05: rotated on use; replaying an old one revokes the current one too."""
    first = tokens_for(browser, provider, scope="openid email")
    second = _token(provider, {"grant_type": "refresh_token",
                               "refresh_token": first["refresh_token"]}, _web_auth(provider))
    assert second.status_code == 200
    current = second.json()["refresh_token"]
    replay = _token(provider, {"grant_type": "refresh_token",
                               "refresh_token": first["refresh_token"]}, _web_auth(provider))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    after = _token(provider, {"grant_type": "refresh_token", "refresh_token": current},
                   _web_auth(provider))
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    userinfo = requests.get(provider.meta["userinfo_endpoint"], timeout=10, headers={
        "Authorization": f"Bearer {second.json()['access_token']}"})
    assert userinfo.status_code == 401


def test_O05_refresh_scope_cannot_grow(provider: Provider, browser) -> None:
    """O05: a refresh may narrow the scope, never widen it; the grant keeps its scope."""
    first = tokens_for(browser, provider, scope="openid email")
    wider = _token(provider, {"grant_type": "refresh_token", "scope": "openid email profile",
                              "refresh_token": first["refresh_token"]}, _web_auth(provider))
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    second = tokens_for(browser, provider, scope="openid email")
    narrower = _token(provider, {"grant_type": "refresh_token", "scope": "openid",
                                 "refresh_token": second["refresh_token"]}, _web_auth(provider))
    assert narrower.status_code == 200 and narrower.json()["scope"] == "openid"
    back = _token(provider, {"grant_type": "refresh_token",
                             "refresh_token": narrower.json()["refresh_token"]},
                  _web_auth(provider))
    assert back.status_code == 200 and set(back.json()["scope"].split()) == {"openid", "email"}


@pytest.mark.parametrize("response_type", ["token", "id_token", "code token", "code id_token",
                                           "none"])
def test_O06_no_implicit_or_hybrid(provider: Provider, browser, response_type: str) -> None:
    """O06: implicit and hybrid response types are refused at the client's redirect URI."""
    params = location_params(authorize(browser, provider, response_type=response_type))
    assert params["error"] in ("unsupported_response_type", "unauthorized_client")
    assert "access_token" not in params and "code" not in params


def test_O06_no_password_grant(provider: Provider) -> None:
    """O06: the password grant does not exist."""
    answer = _token(provider, {"grant_type": "password", "username": "alice",
                               "password": "x"}, _web_auth(provider))
    assert answer.status_code == 400 and answer.json()["error"] == "unsupported_grant_type"


def test_O07_client_authentication_everywhere(provider: Provider, browser) -> None:
    """O07: wrong secrets fail at token, introspection and revocation; secrets stored hashed."""
    for endpoint in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        answer = requests.post(provider.meta[endpoint], auth=("web", "wrong"), timeout=10,
                               data={"grant_type": "client_credentials", "token": "x"})
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    anonymous = requests.post(provider.meta["introspection_endpoint"], data={"token": "x"},
                              timeout=10)
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    from bridge.config import load_config
    from bridge.store import open_store

    store = open_store(load_config(provider.live.config_path).store)
    body = json.dumps(store.get_document("relying-party", "web").body)
    store.close()
    assert provider.client("web").secret not in body and "client_secret_sha256" in body


def _assertion(provider: Provider, **claims) -> str:
    now = int(time.time())
    payload = {"iss": "pkjwt", "sub": "pkjwt", "aud": provider.meta["token_endpoint"],
               "iat": now, "exp": now + 60, "jti": f"j-{time.monotonic_ns()}"}
    payload.update(claims)
    key = claims.pop("_key", None) or provider.assertion_key
    payload.pop("_key", None)
    return pyjwt.encode(payload, key, algorithm="ES256", headers={"kid": "client-key-1"})


@pytest.mark.parametrize("claims", [
    {"iss": "someone-else"},
    {"aud": "https://elsewhere.example.test/token"},
    {"exp": int(time.time()) - 3600},
    {"_key": ec.generate_private_key(ec.SECP256R1())},
])
def test_O07_private_key_jwt_checks(provider: Provider, claims: dict) -> None:
    """O07: private_key_jwt needs iss = sub = client_id, our audience, exp, the right key."""
    answer = _token(provider, {"grant_type": "client_credentials", "client_id": "pkjwt",
                               "client_assertion_type": ASSERTION_TYPE,
                               "client_assertion": _assertion(provider, **claims)})
    assert answer.status_code in (400, 401) and answer.json()["error"] == "invalid_client"


def _b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_O08_jose_attacks_on_bearer_tokens(provider: Provider, browser) -> None:
    """O08: alg none (any casing), HS256 with our public key, jku: all rejected."""
    real = tokens_for(browser, provider)["access_token"]
    header = pyjwt.get_unverified_header(real)
    claims = pyjwt.decode(real, options={"verify_signature": False})
    forged = []
    for alg in ("none", "None", "NONE", "nOnE"):
        forged.append(f"{_b64({**header, 'alg': alg})}.{_b64(claims)}.")
    jwks = requests.get(provider.meta["jwks_uri"], timeout=10).json()
    public = json.dumps(next(k for k in jwks["keys"] if k["kid"] == header["kid"])).encode()
    import hashlib
    import hmac

    signing_input = f"{_b64({**header, 'alg': 'HS256'})}.{_b64(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    forged.append(signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode())
    forged.append(f"{_b64({**header, 'jku': 'https://attacker.test/jwks'})}."
                  f"{real.split('.', 1)[1]}")
    forged.append(real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"))
    for token in forged:
        answer = requests.get(provider.meta["userinfo_endpoint"], timeout=10,
                              headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, token
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_O08_client_assertion_with_alg_none(provider: Provider) -> None:
    """O08: an unsigned client assertion is not client authentication."""
    now = int(time.time())
    unsigned = pyjwt.encode({"iss": "pkjwt", "sub": "pkjwt", "jti": "none-1", "iat": now,
                             "aud": provider.meta["token_endpoint"], "exp": now + 60},
                            key="", algorithm="none")
    answer = _token(provider, {"grant_type": "client_credentials", "client_id": "pkjwt",
                               "client_assertion_type": ASSERTION_TYPE,
                               "client_assertion": unsigned})
    assert answer.status_code in (400, 401) and answer.json()["error"] == "invalid_client"


def test_O09_prompt_none_without_session(provider: Provider) -> None:
    """O09: prompt=none with no session answers login_required at the client."""
    params = location_params(authorize(browser_client(), provider, prompt="none"))
    assert params["error"] == "login_required"


def test_O10_no_store_and_id_token_not_a_bearer(provider: Provider, browser) -> None:
    """O10: token responses are not cached; an ID token is not an access token."""
    code, verifier, _ = code_for(browser, provider)
    response = redeem(provider, code, verifier)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    id_token = response.json()["id_token"]
    answer = requests.get(provider.meta["userinfo_endpoint"], timeout=10,
                          headers={"Authorization": f"Bearer {id_token}"})
    assert answer.status_code == 401


def test_O10_revocation_only_by_the_owner(provider: Provider, browser) -> None:
    """O10: another client cannot revoke a token; the owner can, and it stops working."""
    token = tokens_for(browser, provider)
    daemon = provider.client("daemon")
    foreign = requests.post(provider.meta["revocation_endpoint"], timeout=10,
                            auth=(daemon.client_id, daemon.secret or ""),
                            data={"token": token["access_token"]})
    assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert requests.get(provider.meta["userinfo_endpoint"], headers=bearer,
                        timeout=10).status_code == 200
    own = requests.post(provider.meta["revocation_endpoint"], auth=_web_auth(provider),
                        data={"token": token["access_token"]}, timeout=10)
    assert own.status_code == 200
    assert requests.get(provider.meta["userinfo_endpoint"], headers=bearer,
                        timeout=10).status_code == 401
    refresh = requests.post(provider.meta["revocation_endpoint"], auth=_web_auth(provider),
                            data={"token": token["refresh_token"],
                                  "token_type_hint": "refresh_token"}, timeout=10)
    assert refresh.status_code == 200
    again = _token(provider, {"grant_type": "refresh_token",
                              "refresh_token": token["refresh_token"]}, _web_auth(provider))
    assert again.status_code == 400


def test_O10_introspection(provider: Provider, browser) -> None:
    """O10: the owner and the token's resource server may introspect; others see inactive."""
    rs = provider.client("rs")
    daemon = provider.client("daemon")
    issued = _token(provider, {"grant_type": "client_credentials", "scope": "api.read"},
                    (daemon.client_id, daemon.secret or "")).json()["access_token"]
    by_rs = requests.post(provider.meta["introspection_endpoint"], timeout=10,
                          auth=(rs.client_id, rs.secret or ""), data={"token": issued}).json()
    assert by_rs["active"] is True and by_rs["client_id"] == "daemon"
    assert by_rs["scope"] == "api.read" and by_rs["aud"] == "https://api.example.test"
    user = tokens_for(browser, provider)
    by_stranger = requests.post(provider.meta["introspection_endpoint"], timeout=10,
                                auth=(rs.client_id, rs.secret or ""),
                                data={"token": user["access_token"]}).json()
    assert by_stranger == {"active": False}
    by_owner = requests.post(provider.meta["introspection_endpoint"], timeout=10,
                             auth=_web_auth(provider),
                             data={"token": user["refresh_token"]}).json()
    assert by_owner["active"] is True and by_owner["token_type"] == "refresh_token"
    garbage = requests.post(provider.meta["introspection_endpoint"], timeout=10,
                            auth=_web_auth(provider), data={"token": "x" * 20000}).json()
    assert garbage == {"active": False}


def test_O11_jwks_has_only_public_unique_keys(provider: Provider) -> None:
    """O11: unique kids, asymmetric public keys only; the issuer matches discovery."""
    keys = requests.get(provider.meta["jwks_uri"], timeout=10).json()["keys"]
    assert len({k["kid"] for k in keys}) == len(keys)
    for key in keys:
        assert key["kty"] in ("EC", "RSA")
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
    assert provider.meta["issuer"] == provider.url


# -- RP-initiated logout ----------------------------------------------------------------------


def test_rp_initiated_logout_returns_exactly(provider: Provider, browser) -> None:
    """oidcc-rp-initiated-logout: the session ends and the browser returns with state."""
    token = tokens_for(browser, provider)
    bad = browser.get(provider.meta["end_session_endpoint"], allow_redirects=False, params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGOUT_CALLBACK + "?x"})
    assert bad.status_code == 400 and "Location" not in bad.headers
    done = browser.get(provider.meta["end_session_endpoint"], allow_redirects=False, params={
        "id_token_hint": token["id_token"], "post_logout_redirect_uri": LOGOUT_CALLBACK,
        "state": "bye"})
    assert done.status_code == 302 and done.headers["Location"] == LOGOUT_CALLBACK + "?state=bye"
    params = location_params(authorize(browser, provider, prompt="none"))
    assert params["error"] == "login_required"


def test_rp_initiated_logout_bad_hint(provider: Provider, browser) -> None:
    """oidcc-rp-initiated-logout-bad-id-token-hint: an error page, the session stays."""
    token = tokens_for(browser, provider)
    forged = token["id_token"][:-4] + ("AAAA" if not token["id_token"].endswith("AAAA")
                                       else "BBBB")
    answer = browser.get(provider.meta["end_session_endpoint"], allow_redirects=False, params={
        "id_token_hint": forged, "post_logout_redirect_uri": LOGOUT_CALLBACK})
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert "code" in location_params(authorize(browser, provider, prompt="none"))


# -- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize("request_kwargs", [
    {"data": "grant_type=client_credentials&grant_type=client_credentials",
     "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    {"json": {"grant_type": "client_credentials"}},
    {"data": {"grant_type": "authorization_code", "code": "\x00\xff" * 10}},
    {"data": {"grant_type": "authorization_code", "code": "a" * 100000}},
    {"data": {"grant_type": "refresh_token", "refresh_token": "../../etc/passwd"}},
    {"data": {"grant_type": EXCHANGE, "subject_token": "e30.e30.e30",
              "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
              "audience": "x"}},
    {"data": {"grant_type": "x" * 10000}},
    {"data": "%zz%%=&&==", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    {"data": b"\xff\xfe\x00garbage", "headers": {"Content-Type":
                                                 "application/x-www-form-urlencoded"}},
    {"data": "a=" + "b" * (2 * 1024 * 1024),
     "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    {"headers": {"Authorization": "Basic !!!notbase64"}, "data": {"grant_type": "x"}},
    {"headers": {"Authorization": "Basic " + base64.b64encode(b"web").decode()},
     "data": {"grant_type": "client_credentials"}},
])
def test_token_endpoint_hostile_input(provider: Provider, request_kwargs: dict) -> None:
    """Malformed, repeated, oversized and injected input: a JSON protocol error, never 500."""
    answer = requests.post(provider.meta["token_endpoint"], timeout=20, **request_kwargs)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:200])
    assert answer.headers["Content-Type"].startswith("application/json")
    assert isinstance(answer.json()["error"], str)


def test_json_endpoints_answer_json_errors(provider: Provider) -> None:
    """Wrong methods at JSON endpoints are JSON errors (not HTML pages)."""
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        answer = requests.get(provider.meta[name], timeout=10)
        assert answer.status_code == 405 and answer.json()["error"] == "invalid_request"
    weird = requests.get(provider.meta["userinfo_endpoint"], timeout=10,
                         headers={"Authorization": "Bearer \x7f" + "a" * 20000})
    assert weird.status_code in (400, 401)


@pytest.mark.parametrize("params", [
    {"state": "s" * 5000},
    {"nonce": "n" * 5000},
    {"max_age": "-1"},
    {"max_age": "9" * 30},
    {"prompt": "none login"},
    {"response_mode": "fragment"},
    {"id_token_hint": "not.a.jwt"},
    {"scope": "openid \x00\x01"},
    {"code_challenge": "short", "code_challenge_method": "S256"},
    {"login_hint": "x" * 1000},
])
def test_authorize_hostile_input(provider: Provider, browser, params: dict) -> None:
    """Hostile authorization parameters: a redirect with an error or an error page."""
    answer = authorize(browser, provider, **params)
    assert answer.status_code in (302, 400), answer.status_code
    if answer.status_code == 302:
        got = location_params(answer)
        assert "code" not in got and got["error"]
