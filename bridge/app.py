"""The application factory: `create_app` builds everything; nothing lives at module level."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from bridge import observability
from bridge.audit import AuditTrail
from bridge.config import BridgeConfig, load_config
from bridge.frontends import test_app
from bridge.frontends.oidc import views as oidc_views
from bridge.frontends.saml import frontend as saml_frontend
from bridge.frontends.saml import views as saml_views
from bridge.keys import KeyRing, load_or_create_secret
from bridge.login_flow import LoginFlow
from bridge.observability import Metrics
from bridge.relying_parties import RelyingPartyRegistry, load_relying_party_files
from bridge.services import EXTENSION_KEY, Services
from bridge.sessions import SessionManager
from bridge.sign_in_protection import SignInProtection
from bridge.sources import PasswordSource
from bridge.sources.embedded import EmbeddedDirectory
from bridge.sources.ldap import LdapSource
from bridge.store import Store, StoreUnavailable, open_store
from bridge.web import auth, ops, password_change
from bridge.web.csrf import CsrfProtection
from bridge.web.response_policy import ResponsePolicy

log = logging.getLogger("bridge")

JSON_ENDPOINTS = frozenset({"ops.healthz", "ops.readyz", "ops.metrics"}) | oidc_views.JSON_VIEWS


def build_sources(config: BridgeConfig, store: Store) -> list[PasswordSource]:
    """Instantiate the configured identity sources, in config order."""
    sources: list[PasswordSource] = []
    for source in config.sources:
        if source.type == "embedded":
            sources.append(EmbeddedDirectory(store, source.id, source.display_name))
        elif source.type == "ldap":
            sources.append(LdapSource(source))
    return sources


class BridgeFlask(Flask):
    """Flask, remembering whether each view and hook is a coroutine function."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sync_callables: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Flask's ensure_sync, asked once per function instead of on every request."""
        # Flask runs inspect.iscoroutinefunction on every hook and view of every request; the
        # answer never changes for a function. Bounded, in case callables are made per request.
        wrapped = self._sync_callables.get(func)
        if wrapped is None:
            wrapped = super().ensure_sync(func)
            if len(self._sync_callables) < 4096:
                self._sync_callables[func] = wrapped
        return wrapped


def create_app(
    config: BridgeConfig | None = None,
    *,
    config_path: str | Path | None = None,
    store: Store | None = None,
) -> Flask:
    """Build the bridge's Flask app from a validated config (loaded from disk if not given)."""
    config = config or load_config(config_path)
    observability.configure_logging(config.logging.level, config.logging.format)
    app = BridgeFlask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=config.server.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=config.server.max_request_bytes,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if config.server.trusted_proxy_hops:
        hops = config.server.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    store = store or open_store(config.store, tolerate_unavailable=True)
    keys = KeyRing.load(
        config.keys.dir, retired_publish_seconds=config.keys.retired_publish_hours * 3600
    )
    for warning in keys.warnings():
        log.warning(warning)
    secret = (
        config.secret_key.get_secret_value().encode()
        if config.secret_key
        else load_or_create_secret(config.keys.dir)
    )
    metrics = Metrics()
    sessions = SessionManager(
        store, config.session.idle_minutes * 60, config.session.absolute_hours * 3600
    )
    audit = AuditTrail(store, config.audit.retention_days)
    sources = build_sources(config, store)
    flow = LoginFlow(
        store,
        sessions,
        sources,
        audit,
        metrics,
        config.session.login_request_minutes * 60,
        revalidate_seconds=config.session.revalidate_minutes * 60,
        protection=SignInProtection(store, config.sign_in_protection),
    )
    flow.register(test_app.TestAppFrontend())
    flow.register(saml_frontend.SamlFrontend(secret))
    app.extensions[EXTENSION_KEY] = Services(
        config=config,
        store=store,
        keys=keys,
        sources=sources,
        sessions=sessions,
        login_flow=flow,
        audit=audit,
        metrics=metrics,
        relying_parties=RelyingPartyRegistry(
            store, load_relying_party_files(config.relying_parties_dir)
        ),
        csrf=CsrfProtection(
            secret, config.session.login_request_minutes * 60, config.server.secure_cookies
        ),
    )

    observability.init_app(app, metrics)
    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(test_app.bp)
    app.register_blueprint(password_change.bp)
    app.register_blueprint(saml_views.bp)
    oidc_views.init_app(app)
    _install_response_policy(app)
    _install_error_pages(app)
    return app


def _install_response_policy(app: Flask) -> None:
    csrf = app.extensions[EXTENSION_KEY].csrf

    @app.after_request
    def _csrf_cookie(response: Response) -> Response:
        return csrf.set_cookie(response)

    # Security headers, no-store (except static files) and X-Request-ID: see response_policy.
    static_prefix = (app.static_url_path or "/static") + "/"
    app.wsgi_app = ResponsePolicy(app.wsgi_app, static_prefix)  # type: ignore[method-assign]


def _wants_json() -> bool:
    return request.endpoint in JSON_ENDPOINTS or request.path.startswith("/admin/api/")


def _install_error_pages(app: Flask) -> None:
    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(exc: StoreUnavailable) -> Response:
        log.error("store unavailable", extra={"error": str(exc), "path": request.path[:256]})
        message = "The service is temporarily unavailable. Please try again shortly."
        return _error(503, message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return _error(500, "Something went wrong on our side. Please try again.")


def _error(status: int, message: str) -> Response:
    if _wants_json():
        response = jsonify(error=message)
    else:
        response = make_response(render_template("error.html", message=message, status=status))
    response.status_code = status
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response
