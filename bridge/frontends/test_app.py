"""The built-in test application: after sign-in it shows the canonical Identity.

It is a frontend like the SAML and OIDC ones (protocol "test-app"), so it exercises the same
login flow a real relying party does. It is the first page an admin opens.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, make_response, redirect, render_template, url_for

from bridge.login_flow import LoginError, LoginRequest
from bridge.services import services
from bridge.sessions import SsoSession
from bridge.web.auth import current_session

PROTOCOL = "test-app"
bp = Blueprint("test_app", __name__, url_prefix="/app")


class TestAppFrontend:
    """Completes test-app requests by sending the browser back to the app's page."""

    __test__ = False
    protocol = PROTOCOL

    def complete(self, login_request: LoginRequest, session: SsoSession) -> Response:
        """Signed in: show the page."""
        return redirect(url_for("test_app.index"), 303)

    def fail(self, login_request: LoginRequest, error: LoginError) -> Response:
        """The test app never asks passively; show the reason anyway."""
        return make_response(render_template("error.html", message=error.message), 400)


@bp.before_request
def _enabled() -> None:
    if not services().config.test_app.enabled:
        abort(404)


@bp.get("/")
def index() -> Response:
    """Show the signed-in user's Identity and the relying parties that exist."""
    session = current_session()
    if session is None:
        return services().login_flow.start(LoginRequest(protocol=PROTOCOL), None)
    return make_response(
        render_template(
            "test_app.html",
            identity=session.identity,
            session=session,
            relying_parties=services().relying_parties.all(),
        )
    )
