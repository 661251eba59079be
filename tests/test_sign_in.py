"""Browser sign-in through the wire: a live bridge under gunicorn and a cookie-keeping client."""

from __future__ import annotations

import re
import sqlite3
from http.cookies import SimpleCookie

import pytest
import requests

from tests.conftest import ALICE_PASSWORD
from tests.support import LiveBridge, browser_client, form_fields, sign_in

GENERIC = "The username or password is incorrect."


def _db(live: LiveBridge) -> sqlite3.Connection:
    return sqlite3.connect(live.config_path.parent / "data" / "bridge.db")


def _counts(live: LiveBridge) -> tuple[int, int, int]:
    """(live sessions, all records, audit events) straight from the database."""
    with _db(live) as db:
        sessions = db.execute("SELECT count(*) FROM records WHERE kind='sso-session'").fetchone()
        records = db.execute("SELECT count(*) FROM records").fetchone()
        audit = db.execute("SELECT count(*) FROM audit").fetchone()
    return sessions[0], records[0], audit[0]


def _set_cookie_headers(response: requests.Response) -> list[str]:
    return response.raw.headers.getlist("Set-Cookie")


def test_sign_in_shows_the_test_application(live: LiveBridge) -> None:
    client = browser_client()
    first = client.get(live.url + "/app/", allow_redirects=False)
    assert first.status_code == 302
    assert re.search(r"/login\?request=[A-Za-z0-9_\-]{20,}$", first.headers["Location"])

    page = sign_in(client, live.url, "alice", ALICE_PASSWORD)
    assert page.status_code == 200
    assert page.url == live.url + "/app/"
    assert "Sign-in works" in page.text
    assert '<td id="username">alice</td>' in page.text
    assert '<td id="groups">staff, team-alice</td>' in page.text
    assert '<td id="source">local</td>' in page.text
    assert "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport" in page.text
    # Signed in: the page now answers without another sign-in.
    again = client.get(live.url + "/app/", allow_redirects=False)
    assert again.status_code == 200


def test_session_cookie_is_secure_httponly_lax_and_rotates(live: LiveBridge) -> None:
    client = browser_client()
    sign_in(client, live.url, "alice", ALICE_PASSWORD, path="/login")
    first_id = client.cookies.get("bridge_session")
    assert first_id and len(first_id) >= 43  # 256 bits, base64url

    page = client.get(live.url + "/login")
    response = client.post(
        live.url + "/login",
        data={**form_fields(page.text), "username": "alice", "password": ALICE_PASSWORD},
        allow_redirects=False,
    )
    assert response.status_code == 303
    cookie_headers = [h for h in _set_cookie_headers(response) if h.startswith("bridge_session=")]
    assert len(cookie_headers) == 1
    attributes = {a.strip().split("=")[0].lower() for a in cookie_headers[0].split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path"} <= attributes
    assert "SameSite=Lax" in cookie_headers[0]
    parsed = SimpleCookie(cookie_headers[0])
    second_id = parsed["bridge_session"].value
    assert second_id != first_id

    # The pre-sign-in id no longer works (no fixation), the new one does.
    stale = browser_client()
    stale.cookies.set("bridge_session", first_id, domain="localhost.local")
    assert (
        requests.get(live.url + "/app/", cookies={"bridge_session": first_id},
                     allow_redirects=False).status_code == 302
    )
    assert (
        requests.get(live.url + "/app/", cookies={"bridge_session": second_id},
                     allow_redirects=False).status_code == 200
    )


BAD_INPUTS = {
    "unknown user": ("nobody", "whatever password"),
    "wrong password": ("alice", "not the password"),
    "empty password": ("alice", ""),
    "whitespace password": ("alice", "   \t "),
    "nul in password": ("alice", ALICE_PASSWORD + "\x00"),
    "10 KB username": ("a" * 10240, "whatever password"),
    "injection username": ("*)(uid=*", "whatever password"),
    "empty username": ("", "whatever password"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_credentials_get_one_generic_answer(live: LiveBridge, case: str) -> None:
    username, password = BAD_INPUTS[case]
    client = browser_client()
    page = client.get(live.url + "/login")
    before = _counts(live)
    response = client.post(
        live.url + "/login",
        data={**form_fields(page.text), "username": username, "password": password},
        allow_redirects=False,
    )
    _assert_generic_failure(response)
    sessions, records, audit = _counts(live)
    assert (sessions, records) == before[:2], "a failed sign-in wrote something"
    assert audit == before[2] + 1, "exactly one audit record per attempt"
    assert "bridge_session" not in client.cookies


@pytest.mark.parametrize("token", [None, "", "forged", "x" * 300])
def test_missing_or_forged_csrf_token_gets_the_same_answer(live: LiveBridge, token: str) -> None:
    client = browser_client()
    page = client.get(live.url + "/login")
    data = {"request": "", "username": "alice", "password": ALICE_PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    before = _counts(live)
    response = client.post(live.url + "/login", data=data, allow_redirects=False)
    _assert_generic_failure(response)
    assert _counts(live)[:2] == before[:2]
    assert form_fields(page.text)["csrf_token"] != token


def test_csrf_token_of_another_browser_is_refused(live: LiveBridge) -> None:
    attacker = browser_client()
    token = form_fields(attacker.get(live.url + "/login").text)["csrf_token"]
    victim = browser_client()
    victim.get(live.url + "/login")  # the victim has a binding cookie of its own
    response = victim.post(
        live.url + "/login",
        data={"csrf_token": token, "request": "", "username": "alice",
              "password": ALICE_PASSWORD},
        allow_redirects=False,
    )
    _assert_generic_failure(response)


def _assert_generic_failure(response: requests.Response) -> None:
    assert response.status_code == 401
    assert GENERIC in response.text
    assert "Traceback" not in response.text
    assert 'name="csrf_token"' in response.text  # the form is shown again


def test_disabled_user_is_told_only_after_a_right_password(live: LiveBridge) -> None:
    from tests.support import run_cli

    result = run_cli("users", "disable", "bob", "--config", str(live.config_path))
    assert result.returncode == 0, result.stderr
    try:
        client = browser_client()
        wrong = sign_in(client, live.url, "bob", "wrong password here", path="/login")
        assert wrong.status_code == 401 and GENERIC in wrong.text
        right = sign_in(client, live.url, "bob", "bob's long password 1", path="/login")
        assert right.status_code == 401
        assert "This account is disabled" in right.text
        assert "bridge_session" not in client.cookies
    finally:
        run_cli("users", "enable", "bob", "--config", str(live.config_path))


def test_logout_needs_csrf_and_ends_the_session(live: LiveBridge) -> None:
    client = browser_client()
    sign_in(client, live.url, "alice", ALICE_PASSWORD)
    session_id = client.cookies.get("bridge_session")
    confirm = client.get(live.url + "/logout")
    assert confirm.status_code == 200 and "Sign out" in confirm.text

    forged = client.post(live.url + "/logout", data={"csrf_token": "forged"})
    assert forged.status_code == 400
    assert client.get(live.url + "/app/", allow_redirects=False).status_code == 200

    token = form_fields_logout(confirm.text)
    done = client.post(live.url + "/logout", data={"csrf_token": token})
    assert done.status_code == 200 and "You are signed out" in done.text
    assert "bridge_session" not in client.cookies
    replay = requests.get(live.url + "/app/", cookies={"bridge_session": session_id},
                          allow_redirects=False)
    assert replay.status_code == 302


def form_fields_logout(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_browser_pages_carry_strict_security_headers(live: LiveBridge) -> None:
    response = requests.get(live.url + "/login")
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-ID"])


def test_oversized_form_is_refused_cleanly(live: LiveBridge) -> None:
    client = browser_client()
    page = client.get(live.url + "/login")
    response = client.post(
        live.url + "/login",
        data={**form_fields(page.text), "username": "a" * (2 * 1024 * 1024), "password": "x"},
    )
    assert response.status_code == 413
    assert "Traceback" not in response.text


def test_unknown_or_expired_request_id_still_signs_in(live: LiveBridge) -> None:
    client = browser_client()
    page = client.get(live.url + "/login?request=does-not-exist")
    assert form_fields(page.text)["request"] == ""
    response = client.post(
        live.url + "/login",
        data={**form_fields(page.text), "username": "alice", "password": ALICE_PASSWORD},
    )
    assert response.status_code == 200 and response.url == live.url + "/app/"


def test_login_request_is_single_use(live: LiveBridge) -> None:
    client = browser_client()
    first = client.get(live.url + "/app/")
    fields = form_fields(first.text)
    assert fields["request"]
    ok = client.post(live.url + "/login",
                     data={**fields, "username": "alice", "password": ALICE_PASSWORD})
    assert ok.status_code == 200
    with _db(live) as db:
        left = db.execute(
            "SELECT count(*) FROM records WHERE kind='login-request' AND key=?",
            (fields["request"],),
        ).fetchone()[0]
    assert left == 0
