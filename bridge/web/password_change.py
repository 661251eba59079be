"""Changing a directory password: when it has expired, must change, or will expire soon.

The user always gives the current password: a ticket from /login only pre-fills the username
and says why the page appeared, it authorises nothing. The source changes the password the
way the directory checks history and complexity (AD: unicodePwd delete + add), and the
directory's refusals are shown in plain words. After a change the user is signed in with the
new password and the relying party's request continues.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from flask import Blueprint, Response, g, make_response, redirect, render_template, request, url_for

from bridge.login_flow import Client
from bridge.services import services
from bridge.sign_in_protection import Verdict
from bridge.sources import (
    MAX_PASSWORD_LENGTH,
    MAX_USERNAME_LENGTH,
    TOO_MANY_ATTEMPTS,
    WRONG_CREDENTIALS,
    Outcome,
    PasswordChangeSource,
    SourceUnavailable,
)
from bridge.web import auth

bp = Blueprint("password_change", __name__)
TICKET_KIND = "password-change-ticket"
TICKET_SECONDS = 600
REASONS = {
    Outcome.PASSWORD_EXPIRED.value: "Your password has expired. Choose a new one to continue.",
    Outcome.MUST_CHANGE_PASSWORD.value: (
        "You must change your password before you can sign in. Choose a new one to continue."
    ),
}
UNAVAILABLE = "Changing passwords is temporarily unavailable. Please try again shortly."
MISMATCH = "The new passwords do not match."


def start_required_change(
    username: str, source_id: str, outcome: Outcome, request_id: str | None
) -> Response:
    """After /login proved the password but it must change: send the browser to this page."""
    ticket = secrets.token_urlsafe(24)
    services().store.put(
        TICKET_KIND,
        ticket,
        {"username": username[:MAX_USERNAME_LENGTH], "source": source_id,
         "reason": outcome.value, "request": request_id},
        TICKET_SECONDS,
    )
    return redirect(url_for("password_change.change", ticket=ticket), 303)


def expiry_warning(expires: datetime, request_id: str | None) -> Response:
    """The page between a successful sign-in and the relying party: 'expires in N days'."""
    days = max(0, (expires - datetime.now(UTC)).days)
    page = render_template(
        "password_expiry_warning.html",
        days=days,
        expires=expires,
        change_url=url_for("password_change.change", request=request_id or None),
        continue_url=url_for("password_change.continue_sign_in", request=request_id or None),
    )
    return make_response(page, 200)


@bp.get("/login/continue")
def continue_sign_in() -> Response:
    """Go on to the relying party after the expiry warning (the session already exists)."""
    session = auth.current_session()
    if session is None:
        return redirect(url_for("auth.login", request=request.args.get("request")), 303)
    response = services().login_flow.finish(request.args.get("request"), session)
    return response or redirect(auth.landing_url(), 303)


def _ticket(value: str | None) -> dict[str, str] | None:
    if not value or len(value) > 64:
        return None
    return services().store.get(TICKET_KIND, value)


def _page(ticket: str | None, request_id: str | None, username: str = "",
          error: str | None = None, reason: str | None = None, status: int = 200) -> Response:
    page = render_template(
        "password_change.html",
        csrf_token=services().csrf.token(),
        ticket=ticket or "",
        request_id=request_id or "",
        username=username[:MAX_USERNAME_LENGTH],
        error=error,
        reason=reason,
        max_username=MAX_USERNAME_LENGTH,
        max_password=MAX_PASSWORD_LENGTH,
    )
    return make_response(page, status)


@bp.get("/password/change")
def change() -> Response:
    """Show the change-password form."""
    ticket_id = request.args.get("ticket")
    ticket = _ticket(ticket_id)
    if ticket is not None:
        return _page(ticket_id, ticket.get("request"), ticket["username"],
                     reason=REASONS.get(ticket["reason"]))
    return _page(None, request.args.get("request"))


def _source(source_id: str | None) -> PasswordChangeSource | None:
    for source in services().sources:
        if isinstance(source, PasswordChangeSource) and (source_id in (None, source.id)):
            return source
    return None


@bp.post("/password/change")
def change_submit() -> Response:
    """Change the password, then sign in with the new one and continue."""
    form = request.form
    ticket_id = form.get("ticket") or None
    ticket = _ticket(ticket_id)
    request_id = (ticket or {}).get("request") or form.get("request") or None
    username = (ticket or {}).get("username") or form.get("username", "")
    reason = REASONS.get((ticket or {}).get("reason", ""))
    current = form.get("current_password", "")
    new = form.get("new_password", "")
    client = Client(request.remote_addr, request.headers.get("User-Agent"), g.get("request_id"))

    def again(error: str, status: int) -> Response:
        return _page(ticket_id if ticket else None, request_id, username, error, reason, status)

    if not services().csrf.valid(form.get("csrf_token")):
        return again("Your form expired. Please try again.", 400)
    if new != form.get("confirm_password", ""):
        return again(MISMATCH, 400)
    source = _source((ticket or {}).get("source"))
    if source is None:
        return again("Passwords cannot be changed here. Contact your administrator.", 400)
    flow = services().login_flow
    # The current password is a guess like any sign-in: the same protection applies.
    attempt = flow.check_attempt(username, client)
    if attempt.verdict is not Verdict.ALLOWED:
        return again(TOO_MANY_ATTEMPTS, 429)
    admission = flow.admission(attempt)
    try:
        refusal = source.change_password(username, current, new, admission)
    except SourceUnavailable:
        refusal = UNAVAILABLE
    if refusal == TOO_MANY_ATTEMPTS:
        return again(TOO_MANY_ATTEMPTS, 429)  # throttled on the account: nothing was tried
    if refusal is None:
        judged = Outcome.SUCCESS  # the current password was right
    elif refusal == WRONG_CREDENTIALS:
        judged = Outcome.INVALID_CREDENTIALS
    elif refusal == UNAVAILABLE:
        judged = Outcome.SOURCE_UNAVAILABLE
    else:
        judged = Outcome.REJECTED_INPUT  # the new password was refused: no guess was judged
    flow.count_attempt(admission.attempt, judged)
    services().audit.record(
        "password-change",
        "success" if refusal is None else "refused",
        username=username,
        source=source.id,
        client_ip=client.ip,
        user_agent=client.user_agent,
        request_id=client.request_id,
    )
    if refusal is not None:
        return again(refusal, 503 if refusal == UNAVAILABLE else 400)
    if ticket_id:
        services().store.delete(TICKET_KIND, ticket_id)
    login_request = flow.pending(request_id)
    previous = request.cookies.get(services().config.session.cookie_name)
    result = flow.sign_in(username, new, client, login_request, previous)
    if result.session is None:
        page = render_template("password_changed.html", login_url=url_for(
            "auth.login", request=request_id or None))
        return make_response(page, 200)
    g.sso_session = result.session
    response = flow.finish(request_id, result.session) or redirect(auth.landing_url(), 303)
    auth.set_session_cookie(response, result.session)
    return response
