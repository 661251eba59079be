"""JSON logs with a request id, and Prometheus metrics (multi-process aware under gunicorn)."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bridge_request_id", default=None
)
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# Attributes every LogRecord has; anything else was passed with extra= and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the request id, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as one line of text."""
        base = super().format(record)
        request_id = request_id_var.get()
        return f"{base} [{request_id}]" if request_id else base


def configure_logging(level: str, fmt: str) -> None:
    """Send the bridge's logs to stderr in the configured format (idempotent)."""
    logger = logging.getLogger("bridge")
    for handler in list(logger.handlers):
        if getattr(handler, "_bridge_handler", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._bridge_handler = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class Metrics:
    """The bridge's Prometheus metrics, in a registry of this app's own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bridge_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bridge_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.sign_ins = Counter(
            "bridge_sign_ins",
            "Sign-in attempts by outcome and identity source",
            ["outcome", "source"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The text exposition: every worker's figures under gunicorn, else this process's."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def init_app(app: Flask, metrics: Metrics) -> None:
    """Attach request ids, access logs and request metrics to every request."""
    access_log = logging.getLogger("bridge.access")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        g.request_started = time.perf_counter()
        request_id_var.set(g.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        started = g.get("request_started")
        endpoint = request.endpoint or "unmatched"
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if started is not None:
            elapsed = time.perf_counter() - started
            metrics.latency.labels(endpoint=endpoint).observe(elapsed)
            metrics.requests.labels(
                endpoint=endpoint, method=request.method, status=str(response.status_code)
            ).inc()
            # The path only: query strings can carry codes, tokens and SAML messages.
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path[:256],
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client_ip": request.remote_addr,
                },
            )
        return response

    @app.teardown_request
    def _clear(_exc: BaseException | None) -> None:
        request_id_var.set(None)
