"""Helpers the tests share: configs, a live bridge under gunicorn, a browser-like HTTP client."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
BRIDGE = [sys.executable, "-m", "bridge"]
LOOPBACK = {"localhost", "127.0.0.1", "[::1]"}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, **overrides: Any) -> Path:
    """Write a bridge.yaml for tests (embedded source, SQLite and keys under directory)."""
    port = overrides.pop("port", None) or free_port()
    config: dict[str, Any] = {
        "server": {"public_url": f"http://localhost:{port}", "bind": f"127.0.0.1:{port}"},
        "store": {"type": "sqlite", "path": "data/bridge.db"},
        "keys": {"dir": "certs"},
        "sources": [{"id": "local", "type": "embedded"}],
        "test_app": {"enabled": True},
        "logging": {"format": "json"},
        # Tests sign in with wrong passwords on purpose, many times from 127.0.0.1; the
        # protection's own tests turn it on (tests/test_sign_in_protection.py).
        "sign_in_protection": {"enabled": False},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `bridge` command line in a subprocess."""
    return subprocess.run(
        [*BRIDGE, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def prepare(config_path: Path, users: dict[str, str] | None = None) -> None:
    """Generate development keys and add users (name -> password) for a test config."""
    from bridge import keys
    from bridge.config import load_config
    from bridge.sources.embedded import EmbeddedDirectory
    from bridge.store import open_store

    config = load_config(config_path)
    keys.generate(config.keys.dir, development=True, rsa_bits=2048)
    store = open_store(config.store)
    directory = EmbeddedDirectory(store, "local")
    for name, password in (users or {}).items():
        directory.add_user(
            name, password, display_name=name.title(), email=f"{name}@example.test",
            groups=["staff", f"team-{name}"],
        )
    store.close()


class LoopbackSecurePolicy(http.cookiejar.DefaultCookiePolicy):
    """Treat http://localhost as a secure origin for cookies, as browsers do."""

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        """Allow Secure cookies back to loopback hosts over plain http."""
        host = request.host.rsplit(":", 1)[0] if ":" in request.host else request.host
        if host in LOOPBACK:
            return True
        return super().return_ok_secure(cookie, request)


class BrowserSession(requests.Session):
    """requests.Session whose cookie handling treats loopback as secure, like a browser."""

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """Recompute the Cookie header with the loopback-aware policy."""
        prepared = super().prepare_request(request)
        jar = requests.cookies.RequestsCookieJar(policy=LoopbackSecurePolicy())
        jar.update(self.cookies)
        if request.cookies:
            jar.update(requests.cookies.cookiejar_from_dict(request.cookies))
        prepared.headers.pop("Cookie", None)
        prepared.prepare_cookies(jar)
        return prepared


def browser_client() -> requests.Session:
    """A cookie-keeping HTTP client that behaves like a browser on localhost."""
    session = BrowserSession()
    session.trust_env = False
    session.headers["User-Agent"] = "bridge-tests/1.0"
    return session


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
REQUEST_FIELD = re.compile(r'name="request" value="([^"]*)"')


def form_fields(html: str) -> dict[str, str]:
    """The hidden fields of the sign-in form."""
    csrf = CSRF_FIELD.search(html)
    req = REQUEST_FIELD.search(html)
    assert csrf and req, "the page has no sign-in form"
    return {"csrf_token": csrf.group(1), "request": req.group(1)}


def sign_in(client: requests.Session, base: str, username: str, password: str,
            path: str = "/app/") -> requests.Response:
    """Open a page, follow the redirect to /login, and submit the form."""
    page = client.get(base + path)
    assert page.status_code == 200, page.status_code
    fields = form_fields(page.text)
    return client.post(
        base + "/login", data={**fields, "username": username, "password": password}
    )


def sign_in_attempt(base: str, username: str, password: str,
                    headers: dict[str, str] | None = None) -> requests.Response:
    """One POST /login from a new browser (its form loaded first); redirects not followed."""
    client = browser_client()
    page = client.get(base + "/login", headers=headers)
    return client.post(
        base + "/login",
        data={**form_fields(page.text), "username": username, "password": password},
        headers=headers,
        allow_redirects=False,
    )


@dataclass
class LiveBridge:
    """A bridge running under gunicorn in a subprocess."""

    url: str
    config_path: Path
    process: subprocess.Popen[str]
    log_path: Path

    def logs(self) -> str:
        """Everything the server wrote to stderr/stdout so far."""
        return self.log_path.read_text(errors="replace")


def wait_until_up(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Poll /healthz until it answers (bounded), failing fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bridge exited with {process.returncode}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"bridge did not answer at {url} within {timeout}s")


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads a bridge config without resolving !env/!envfile (their text is kept)."""


_TagTolerantLoader.add_multi_constructor(
    "!", lambda loader, _suffix, node: loader.construct_scalar(node)
)


def server_settings(config_path: Path) -> dict[str, Any]:
    """The `server` section of a config file, even one holding secret tags."""
    return yaml.load(config_path.read_text(), Loader=_TagTolerantLoader)["server"]  # noqa: S506


@contextmanager
def live_bridge(config_path: Path, workers: int = 2) -> Iterator[LiveBridge]:
    """Start `bridge serve` on the config's bind address and stop it afterwards."""
    server = server_settings(config_path)
    log_path = config_path.parent / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [*BRIDGE, "serve", "--config", str(config_path), "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    url = "http://" + server["bind"]
    try:
        wait_until_up(url, process)
        yield LiveBridge(server["public_url"], config_path, process, log_path)
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


CHROMIUM = "/usr/bin/chromium"
# Headless, as root, and quiet: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch_chromium(playwright: Any) -> Any:
    """Debian's headless Chromium driven by Playwright (its own browser download is not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
