"""JSON logs with a request id, and Prometheus metrics (multi-process aware under gunicorn)."""

from __future__ import annotations

import contextvars
import glob
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
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
# Where the request's id and start time are kept for the response policy and the access log.
ID_ENVIRON = "bridge.request_id"
STARTED_ENVIRON = "bridge.request_started"
MAX_CACHED_LABEL_SETS = 2048
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{8,64}")
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
            "time": _utc_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(entry)


# One encoder for every line (json.dumps builds a new one per call when given `default`).
_JSON = json.JSONEncoder(default=str)
_second_text: tuple[int, str] = (-1, "")


def _utc_millis(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the date and time part is formatted once per second."""
    global _second_text
    second = int(created)
    cached = _second_text
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _second_text = (second, text)
    return f"{cached[1]}.{int((created - second) * 1000):03d}+00:00"


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
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def request_children(self, endpoint: str, method: str, status: str) -> tuple[Any, Any]:
        """The request counter and latency histogram children for these labels (cached).

        `labels()` validates and looks up its arguments on every call; the set of endpoints and
        statuses is small, so the children are kept. Methods come from clients: the cache is
        bounded and anything past it is looked up the ordinary way.
        """
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(endpoint=endpoint, method=method, status=status),
                self.latency.labels(endpoint=endpoint),
            )
            if len(self._children) < MAX_CACHED_LABEL_SETS:
                self._children[key] = children
        return children

    def exposition(self) -> bytes:
        """The text exposition: every worker's figures under gunicorn, else this process's."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            forget_dead_workers(directory)
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def forget_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of worker processes that have exited.

    gunicorn reports each exited worker (`child_exit`); granian does not, so the files of any
    worker that is gone are swept here, when metrics are read, whatever the server.
    """
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = path.rsplit("_", 1)[-1][:-3]
        if pid.isdigit():
            pids.add(int(pid))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, owned by someone else


def init_app(app: Flask, metrics: Metrics) -> None:
    """Attach request ids, access logs and request metrics to every request."""
    access_log = logging.getLogger("bridge.access")

    @app.before_request
    def _start() -> None:
        current = request._get_current_object()  # type: ignore[attr-defined]
        environ = current.environ
        incoming = environ.get(REQUEST_ID_ENVIRON, "")
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.fullmatch(incoming) else
            secrets.token_hex(8)
        )
        g.request_id = request_id
        environ[STARTED_ENVIRON] = time.perf_counter()
        # The response policy middleware copies it into the X-Request-ID response header.
        environ[ID_ENVIRON] = request_id
        request_id_var.set(request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        current = request._get_current_object()  # type: ignore[attr-defined]
        started = current.environ.get(STARTED_ENVIRON)
        if started is not None:
            elapsed = time.perf_counter() - started
            method = current.method
            status = response.status_code
            counter, latency = metrics.request_children(
                current.endpoint or "unmatched", method, str(status)
            )
            latency.observe(elapsed)
            counter.inc()
            if access_log.isEnabledFor(logging.INFO):
                # The path only: query strings can carry codes, tokens and SAML messages.
                # makeRecord + handle is logger.info without the caller lookup (a stack walk
                # for file and line, which the JSON line does not carry).
                access_log.handle(
                    access_log.makeRecord(
                        access_log.name, logging.INFO, "", 0, "request", (), None, None,
                        {
                            "method": method,
                            "path": current.path[:256],
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 2),
                            "client_ip": current.remote_addr,
                        },
                    )
                )
        return response

    @app.teardown_request
    def _clear(_exc: BaseException | None) -> None:
        request_id_var.set(None)
