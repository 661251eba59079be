"""CSRF protection for forms: a signed token bound to a per-browser cookie (double submit).

Nothing is written to the store for it, so showing the sign-in page costs no storage.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Response, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE_NAME = "bridge_csrf"


class CsrfProtection:
    """Issues and checks form tokens bound to the `bridge_csrf` cookie."""

    def __init__(self, secret: bytes, max_age_seconds: int, secure_cookie: bool):
        self._serializer = URLSafeTimedSerializer(secret, salt="bridge-csrf")
        self.max_age_seconds = max_age_seconds
        self.secure_cookie = secure_cookie

    def _binding(self) -> str:
        value = g.get("csrf_binding") or request.cookies.get(COOKIE_NAME, "")
        if not value or len(value) > 64:
            value = secrets.token_urlsafe(24)
            g.csrf_new_binding = True
        g.csrf_binding = value
        return value

    def token(self) -> str:
        """A token for a form on the page being rendered."""
        return self._serializer.dumps(self._binding())

    def valid(self, token: str | None) -> bool:
        """True if the submitted token was issued to this browser and has not expired."""
        cookie = request.cookies.get(COOKIE_NAME)
        if not token or not cookie or len(token) > 256:
            return False
        try:
            bound = self._serializer.loads(token, max_age=self.max_age_seconds)
        except BadSignature:
            return False
        return isinstance(bound, str) and hmac.compare_digest(bound, cookie)

    def set_cookie(self, response: Response) -> Response:
        """Send the binding cookie if this request created one."""
        if g.get("csrf_new_binding"):
            response.set_cookie(
                COOKIE_NAME,
                g.csrf_binding,
                secure=self.secure_cookie,
                httponly=True,
                samesite="Lax",
                path="/",
            )
        return response
