"""Run the bridge under gunicorn or granian (`server.engine`); Flask's server only with --dev.

Both engines fork worker processes that each build the app with `create_app`, honour
`server.workers`, `server.threads`, `server.tls_cert`/`tls_key` and SIGTERM (stop accepting,
finish what is in flight within `server.timeout_seconds`), and share one Prometheus
multi-process directory so `/metrics` from any worker reports the whole server.

granian (a Rust HTTP server) parses HTTP, keeps connections alive and writes responses outside
the GIL; gunicorn's sync and gthread workers do that in Python. On a small JSON endpoint that
is two to three times the requests per CPU-second (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication

from bridge.config import BridgeConfig

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# CGI variables a WSGI server fills from the request; any of them inherited from the process
# environment (granian starts each request's environ from os.environ) must not pass for one.
_REQUEST_VARIABLES = ("CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_USER", "AUTH_TYPE", "HTTPS")


def worker_count(config: BridgeConfig) -> int:
    """Workers from config, else one per CPU (at least two)."""
    return config.server.workers or max(2, os.cpu_count() or 1)


def run_server(
    config: BridgeConfig, bind: str | None = None, workers: int | None = None
) -> None:
    """Serve with the configured engine until SIGTERM or SIGINT."""
    metrics_dir = tempfile.mkdtemp(prefix="bridge-metrics-")
    os.environ[METRICS_ENV] = metrics_dir
    main_pid = os.getpid()
    try:
        if config.server.engine == "granian":
            _run_granian(config, bind or config.server.bind, workers or worker_count(config))
        else:
            BridgeServer(config, bind, workers).run()
    finally:
        # Forked workers leave through SystemExit up this same stack: only the main process
        # may remove the directory every worker is still writing to.
        if os.getpid() == main_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def run_dev(config: BridgeConfig, bind: str | None = None) -> None:
    """Flask's development server, for working on the bridge itself."""
    from bridge.app import create_app

    host, port = split_bind(bind or config.server.bind)
    create_app(config).run(host=host, port=port, debug=False, threaded=True)


def split_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) as a host and a port number."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def _mark_worker_dead(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    if os.environ.get(METRICS_ENV):
        multiprocess.mark_process_dead(worker.pid)


# -- gunicorn ---------------------------------------------------------------------------------


class BridgeServer(BaseApplication):
    """A gunicorn application whose workers each build the app with create_app."""

    def __init__(self, config: BridgeConfig, bind: str | None = None, workers: int | None = None):
        self.bridge_config = config
        self.bind = bind or config.server.bind
        self.workers = workers or worker_count(config)
        super().__init__()

    def load_config(self) -> None:
        """Translate the bridge's server settings into gunicorn's."""
        server = self.bridge_config.server
        settings: dict[str, Any] = {
            "bind": [self.bind],
            "workers": self.workers,
            "threads": server.threads,
            "worker_class": "gthread" if server.threads > 1 else "sync",
            "timeout": server.timeout_seconds,
            "graceful_timeout": server.timeout_seconds,
            "keepalive": 5,
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            # X-Forwarded-* are honoured by the app's ProxyFix only when configured.
            "forwarded_allow_ips": "",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "bridge",
            "child_exit": _mark_worker_dead,
        }
        if server.tls_cert and server.tls_key:
            settings["certfile"] = str(server.tls_cert)
            settings["keyfile"] = str(server.tls_key)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in the worker process."""
        from bridge.app import create_app

        return _frozen(create_app(self.bridge_config))


# -- granian ----------------------------------------------------------------------------------


def _run_granian(config: BridgeConfig, bind: str, workers: int) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    server = config.server
    host, port = split_bind(bind)
    tls: dict[str, Any] = {}
    if server.tls_cert and server.tls_key:
        # TLS 1.2 as well as 1.3, as gunicorn (Python's ssl defaults) accepts.
        tls = {"ssl_cert": server.tls_cert, "ssl_key": server.tls_key,
               "ssl_protocol_min": SSLProtocols.tls12}
    granian = Granian(
        "bridge.app:create_app",  # informational: the app is built by _load_app below
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        # Requests run on this many Python threads per worker (gunicorn's gthread threads).
        blocking_threads=server.threads,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=server.timeout_seconds * 1000),
        websockets=False,
        log_level=LogLevels.warning,
        log_dictconfig=_granian_logging(config.logging.format),
        log_access=False,  # the app writes its own access log line (bridge.access)
        respawn_failed_workers=True,
        workers_kill_timeout=server.timeout_seconds,
        **tls,
    )
    granian.serve(target_loader=partial(_load_app, config), wrap_loader=False)


def _load_app(config: BridgeConfig) -> Callable[..., Iterable[bytes]]:
    """Build the app in a granian worker."""
    # The worker inherits the main process's handlers until granian installs its own after
    # this returns, so a SIGTERM arriving while the app is imported and built would be
    # swallowed and the worker killed only after workers_kill_timeout. Nothing is in flight
    # yet: let the default action end it at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from bridge.app import create_app

    return without_inherited_request_variables(_frozen(create_app(config)))


def _frozen(app: Any) -> Any:
    """The app, with everything built so far moved out of the garbage collector's way.

    A worker holds ~100,000 long-lived objects after create_app (templates, models, keys); a
    full collection walks them all (tens of milliseconds, a latency spike for whichever request
    is running). Frozen objects are never collected, which they would not be anyway.
    """
    gc.collect()
    gc.freeze()
    return app


def without_inherited_request_variables(app: Any) -> Callable[..., Iterable[bytes]]:
    """Drop request variables (HTTP_*, CONTENT_TYPE, ...) that came from os.environ.

    granian builds each request's environ on top of a copy of the process environment, so an
    `HTTP_PROXY` or `HTTP_X_FORWARDED_FOR` set for the process would read as a request header
    the client never sent (the httpoxy family). Those names are known when the worker starts;
    usually there are none and this costs one truth test per request.
    """
    inherited = {
        name: value for name, value in os.environ.items()
        if name.startswith("HTTP_") or name in _REQUEST_VARIABLES
    }
    if not inherited:
        return app

    def scrubbed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        for name, value in inherited.items():
            # A client header with exactly the inherited value is dropped too: harmless.
            if environ.get(name) == value:
                del environ[name]
        return app(environ, start_response)

    return scrubbed


def _granian_logging(fmt: str) -> dict[str, Any]:
    """granian's own messages on stderr, as JSON lines when the bridge logs JSON."""
    formatter: dict[str, Any] = (
        {"()": "bridge.observability.JsonFormatter"}
        if fmt == "json"
        else {"()": "logging.Formatter", "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "formatters": {"generic": formatter, "access": formatter},
        "handlers": {
            "console": {"formatter": "generic", "class": "logging.StreamHandler",
                        "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler",
                       "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "WARNING", "propagate": False},
        },
    }
