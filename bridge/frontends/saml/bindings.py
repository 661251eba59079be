"""Sending SAML messages through the browser: the HTTP-POST form and HTTP-Redirect URLs."""

from __future__ import annotations

import base64
import hashlib
import zlib
from urllib.parse import quote, urlsplit

from flask import Response, make_response, redirect, render_template
from lxml import etree

from bridge.frontends.saml.signing import RSA_SHA256, Signer

# The one inline script of the POST page; its hash is the only script the CSP allows.
AUTO_SUBMIT_SCRIPT = "document.getElementById('saml-post').submit();"
AUTO_SUBMIT_HASH = base64.b64encode(hashlib.sha256(AUTO_SUBMIT_SCRIPT.encode()).digest()).decode()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def post_form(
    url: str, field: str, message: bytes, relay_state: str | None, *, status: int = 200
) -> Response:
    """An auto-submitting form that POSTs the message to url (a registered endpoint only).

    The page's own CSP allows exactly this form target and this script; without JavaScript
    the user presses the button.
    """
    page = render_template(
        "saml_post.html",
        action=url,
        field=field,
        value=base64.b64encode(message).decode("ascii"),
        relay_state=relay_state,
        script=AUTO_SUBMIT_SCRIPT,
    )
    response = make_response(page, status)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'sha256-{AUTO_SUBMIT_HASH}'; style-src 'self'; "
        f"form-action {_origin(url)}; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


def redirect_url(
    url: str, field: str, message: etree._Element, relay_state: str | None, signer: Signer | None
) -> str:
    """A Redirect-binding URL: DEFLATE + Base64 message, optional RelayState, query signature."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = etree.tostring(message, encoding="UTF-8")
    encoded = base64.b64encode(compressor.compress(raw) + compressor.flush()).decode("ascii")
    query = f"{field}={quote(encoded, safe='')}"
    if relay_state is not None:
        query += f"&RelayState={quote(relay_state, safe='')}"
    if signer is not None:
        query += f"&SigAlg={quote(RSA_SHA256, safe='')}"
        query += f"&Signature={quote(signer.sign_query(query), safe='')}"
    separator = "&" if urlsplit(url).query else "?"
    return url + separator + query


def send_redirect(
    url: str, field: str, message: etree._Element, relay_state: str | None, signer: Signer | None
) -> Response:
    """Redirect the browser with a (signed) SAML message."""
    return redirect(redirect_url(url, field, message, relay_state, signer), 302)
