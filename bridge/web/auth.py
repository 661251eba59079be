"""The browser sign-in pages: /login, /logout and the landing page."""

from __future__ import annotations

from flask import Blueprint, Response, g, make_response, redirect, render_template, request, url_for

from bridge.login_flow import PASSWORD_CHANGE_NEEDED, PASSWORD_PROVEN, Client
from bridge.services import services
from bridge.sessions import SsoSession
from bridge.sources import MAX_PASSWORD_LENGTH, MAX_USERNAME_LENGTH, TOO_MANY_ATTEMPTS, Outcome
from bridge.web import password_change

bp = Blueprint("auth", __name__)

GENERIC_FAILURE = "The username or password is incorrect."
# Shown only for outcomes in PASSWORD_PROVEN (and for an unavailable source): anything else
# gets GENERIC_FAILURE, so nobody learns whether an account exists or is locked.
MESSAGES = {
    Outcome.DISABLED: "This account is disabled. Contact your administrator.",
    Outcome.ACCOUNT_EXPIRED: "This account has expired. Contact your administrator.",
    Outcome.LOGON_HOURS: "This account may not sign in at this time of day.",
    Outcome.WORKSTATION_RESTRICTED: "This account may not sign in from here.",
    Outcome.SOURCE_UNAVAILABLE: "Sign-in is temporarily unavailable. Please try again shortly.",
    Outcome.THROTTLED: TOO_MANY_ATTEMPTS,
}
STATUS = {Outcome.SOURCE_UNAVAILABLE: 503, Outcome.THROTTLED: 429}


def current_session() -> SsoSession | None:
    """The SSO session of this browser, if any (loaded and, when due, re-validated once)."""
    if "sso_session" not in g:
        cookie = request.cookies.get(services().config.session.cookie_name)
        g.sso_session = services().login_flow.revalidate(services().sessions.load(cookie))
    return g.sso_session


def set_session_cookie(response: Response, session: SsoSession) -> None:
    """Attach the session cookie: Secure, HttpOnly, SameSite=Lax, host-only."""
    config = services().config
    response.set_cookie(
        config.session.cookie_name,
        session.id,
        secure=config.server.secure_cookies,
        httponly=True,
        samesite="Lax",
        path="/",
    )


def landing_url() -> str:
    """Where a browser goes after signing in without a relying party's request."""
    if services().config.test_app.enabled:
        return url_for("test_app.index")
    return url_for("auth.home")


def _login_page(
    request_id: str | None,
    error: str | None = None,
    status: int = 200,
    username: str = "",
) -> Response:
    login_request = services().login_flow.pending(request_id) if request_id else None
    party = None
    if login_request is not None and login_request.relying_party:
        party = services().relying_parties.get(login_request.relying_party)
    if login_request is not None and not username:
        username = login_request.login_hint or ""
    page = render_template(
        "login.html",
        csrf_token=services().csrf.token(),
        request_id=request_id or "",
        relying_party=party.name if party else None,
        username=username[:MAX_USERNAME_LENGTH],
        error=error,
        max_username=MAX_USERNAME_LENGTH,
        max_password=MAX_PASSWORD_LENGTH,
    )
    return make_response(page, status)


@bp.get("/login")
def login() -> Response:
    """Show the sign-in form."""
    request_id = request.args.get("request")
    if request_id and services().login_flow.pending(request_id) is None:
        request_id = None  # expired or unknown: signing in still works, then lands at home
    return _login_page(request_id)


@bp.post("/login")
def login_submit() -> Response:
    """Check the credentials; on success open a fresh session and continue the request."""
    flow = services().login_flow
    form = request.form
    request_id = form.get("request") or None
    username = form.get("username", "")
    password = form.get("password", "")
    client = Client(
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
        request_id=g.get("request_id"),
    )
    if not services().csrf.valid(form.get("csrf_token")):
        services().audit.record(
            "sign-in",
            Outcome.REJECTED_INPUT.value,
            username=username,
            client_ip=client.ip,
            user_agent=client.user_agent,
            request_id=client.request_id,
            reason="csrf",
        )
        services().metrics.sign_ins.labels(outcome="rejected_input", source="none").inc()
        return _login_page(request_id, GENERIC_FAILURE, 401)
    login_request = flow.pending(request_id)
    previous = request.cookies.get(services().config.session.cookie_name)
    result = flow.sign_in(username, password, client, login_request, previous)
    if result.outcome in PASSWORD_CHANGE_NEEDED and result.source:
        return password_change.start_required_change(
            username, result.source, result.outcome, request_id
        )
    if result.session is None:
        # Throttling is shown: it applies to unknown names alike, so it reveals no account.
        shown = result.outcome in PASSWORD_PROVEN or result.outcome in (
            Outcome.SOURCE_UNAVAILABLE, Outcome.THROTTLED)
        message = MESSAGES.get(result.outcome, GENERIC_FAILURE) if shown else GENERIC_FAILURE
        status = STATUS.get(result.outcome, 401)
        return _login_page(request_id, message, status, username=username)
    g.sso_session = result.session
    if result.password_expires is not None:
        response = password_change.expiry_warning(result.password_expires, request_id)
        set_session_cookie(response, result.session)
        return response
    response = flow.finish(request_id, result.session) or redirect(landing_url(), 303)
    set_session_cookie(response, result.session)
    return response


@bp.get("/logout")
def logout() -> Response:
    """Ask for confirmation, so a link alone cannot sign anyone out."""
    return make_response(
        render_template(
            "logout.html", session=current_session(), csrf_token=services().csrf.token()
        )
    )


@bp.post("/logout")
def logout_submit() -> Response:
    """End the SSO session and clear its cookie."""
    if not services().csrf.valid(request.form.get("csrf_token")):
        return make_response(
            render_template(
                "logout.html",
                session=current_session(),
                csrf_token=services().csrf.token(),
                error="Your sign-out form expired. Please try again.",
            ),
            400,
        )
    session = current_session()
    response = None
    if session is not None:
        done_url = url_for("auth.logged_out")
        response = services().login_flow.end_session(session, done_url)
        record_sign_out(session)
    g.sso_session = None
    response = response or make_response(render_template("logged_out.html"))
    clear_session_cookie(response)
    return response


def record_sign_out(session: SsoSession, **detail: str) -> None:
    """Audit the end of an SSO session, whichever surface ended it."""
    services().audit.record(
        "sign-out",
        "success",
        username=session.identity.username,
        subject=session.identity.subject,
        source=session.identity.source,
        client_ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
        request_id=g.get("request_id"),
        **detail,
    )


def clear_session_cookie(response: Response) -> None:
    """Tell the browser to forget its session cookie (same attributes it was set with)."""
    config = services().config
    response.delete_cookie(
        config.session.cookie_name,
        path="/",
        secure=config.server.secure_cookies,
        httponly=True,
        samesite="Lax",
    )


@bp.get("/logout/done")
def logged_out() -> Response:
    """Where a single-logout round ends."""
    return make_response(render_template("logged_out.html"))


@bp.get("/")
def home() -> Response:
    """The landing page: who is signed in, or the way to sign in."""
    session = current_session()
    if session is None:
        return redirect(url_for("auth.login"))
    return make_response(
        render_template(
            "home.html", identity=session.identity, test_app=services().config.test_app.enabled
        )
    )
