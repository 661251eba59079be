"""Run the bridge under gunicorn (Flask's development server only with --dev)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from bridge.config import BridgeConfig


def worker_count(config: BridgeConfig) -> int:
    """Workers from config, else one per CPU (at least two)."""
    return config.server.workers or max(2, os.cpu_count() or 1)


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

        return create_app(self.bridge_config)


def _mark_worker_dead(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def run_gunicorn(config: BridgeConfig, bind: str | None = None, workers: int | None = None) -> None:
    """Serve with gunicorn; metrics from every worker are merged through a shared directory."""
    metrics_dir = tempfile.mkdtemp(prefix="bridge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    main_pid = os.getpid()
    try:
        BridgeServer(config, bind, workers).run()
    finally:
        # Forked workers leave through SystemExit up this same stack: only the main process
        # may remove the directory every worker is still writing to.
        if os.getpid() == main_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def run_dev(config: BridgeConfig, bind: str | None = None) -> None:
    """Flask's development server, for working on the bridge itself."""
    from bridge.app import create_app

    host, _, port = (bind or config.server.bind).rpartition(":")
    create_app(config).run(host=host.strip("[]"), port=int(port), debug=False, threaded=True)
