"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from bridge.services import services
from bridge.store import StoreError

bp = Blueprint("ops", __name__)
log = logging.getLogger("bridge.ops")


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers HTTP."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the store and every identity source can serve; key warnings listed."""
    checks: dict[str, str] = {}
    ready = True
    try:
        services().store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = f"unavailable: {exc}"
        ready = False
    for source in services().sources:
        try:
            source.check()
            checks[f"source:{source.id}"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            checks[f"source:{source.id}"] = f"unavailable: {type(exc).__name__}: {exc}"
            ready = False
    warnings = services().keys.warnings()
    body = jsonify(status="ready" if ready else "not ready", checks=checks, warnings=warnings)
    return body, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(services().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)
