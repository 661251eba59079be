"""Headers every response carries, added at the WSGI layer from pre-built tuples.

Setting them on Flask's response object (werkzeug's `Headers.setdefault`: a lower-cased scan
per call, a validation per value) cost as much as the rest of a small JSON response; here they
are appended to the header list the server is handed, once, after a single pass over the names
already present. Headers a view set itself win, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bridge.observability import ID_ENVIRON, REQUEST_ID_HEADER

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
# Everything but static files: pages and tokens must not be kept by caches.
NO_STORE = ("Cache-Control", "no-store")
_REQUEST_ID_LOWER = REQUEST_ID_HEADER.lower()

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ResponsePolicy:
    """WSGI middleware: security headers, no-store and X-Request-ID on every response."""

    def __init__(self, app: WsgiApp, static_prefix: str):
        self.app = app
        self.static_prefix = static_prefix
        self._defaults = tuple((name.lower(), (name, value)) for name, value in SECURITY_HEADERS)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Run the app; add the policy's headers to whatever it answers."""
        defaults = self._defaults
        static = environ.get("PATH_INFO", "").startswith(self.static_prefix)

        def policy_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            present = {name.lower() for name, _ in headers}
            for lower, header in defaults:
                if lower not in present:
                    headers.append(header)
            if not static and "cache-control" not in present:
                headers.append(NO_STORE)
            request_id = environ.get(ID_ENVIRON)
            if request_id is not None:
                if _REQUEST_ID_LOWER in present:
                    headers[:] = [h for h in headers if h[0].lower() != _REQUEST_ID_LOWER]
                headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        return self.app(environ, policy_start_response)
