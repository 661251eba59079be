"""Token endpoint benchmark: the bridge side by side with node oidc-provider, same run.

Measures, with the server pinned to one core (core 0) and the load generator on another:
client_credentials grants per second with keep-alive and with a new connection per request
(wrk), p50/p99 at half of the keep-alive peak (an open-loop generator below, latency taken
from each request's scheduled time), and the bridge's authorization_code exchanges and
refresh_token grants per second. Both servers sign ES256 JWT access tokens.

    .venv/bin/python bench/oidc_tokens.py [--duration 10] [--connections 16] [--no-peer]

Needs `wrk` (Debian) and `npm`; oidc-provider is installed into bench/.work/node.
Not a test: it prints figures (docs/benchmarks.md keeps the ones measured).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"
CLIENT_ID = "bench"
CALLBACK = "http://127.0.0.1:9/cb"
SERVER_CORE = "0"
LOAD_CORE = "1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll until the server answers (bounded)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)


def stop(process: subprocess.Popen) -> None:
    """Stop a server started here (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- the bridge -------------------------------------------------------------------------------


def prepare_bridge(directory: Path, port: int) -> tuple[Path, str]:
    """A bridge config with keys and one confidential client; returns (config, secret)."""
    import yaml

    sys.path.insert(0, str(REPO))
    from bridge import keys
    from bridge.config import load_config
    from bridge.frontends.oidc.clients import generate_secret
    from bridge.relying_parties import OidcRelyingParty, RelyingPartyRegistry
    from bridge.store import open_store

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config_path = directory / "bridge.yaml"
    config_path.write_text(yaml.safe_dump({
        "server": {"public_url": f"http://127.0.0.1:{port}", "bind": f"127.0.0.1:{port}"},
        "store": {"type": "sqlite", "path": "data/bridge.db"},
        "keys": {"dir": "certs"},
        "sources": [{"id": "local", "type": "embedded"}],
        "logging": {"format": "json", "level": "WARNING"},
    }))
    config = load_config(config_path)
    keys.generate(config.keys.dir, development=True, rsa_bits=2048)
    secret, digest = generate_secret()
    store = open_store(config.store)
    RelyingPartyRegistry(store, []).save(OidcRelyingParty.model_validate({
        "id": CLIENT_ID, "name": "Bench", "protocol": "oidc", "client_id": CLIENT_ID,
        "redirect_uris": [CALLBACK], "client_secret_sha256": digest,
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes": ["openid", "email", "api.read"], "access_token_audience":
        "https://api.example.test",
        "release": [{"type": "attribute", "name": "email", "from": "email",
                     "scopes": ["email"]}],
    }))
    store.close()
    return config_path, secret


def seed_codes_and_refresh_tokens(config_path: Path, count: int) -> tuple[list[str], list[str]]:
    """Codes and refresh tokens as the provider stores them (the browser part is not timed)."""
    from bridge.config import load_config
    from bridge.frontends.oidc.grants import CODE_KIND, GRANT_KIND, REFRESH_KIND
    from bridge.frontends.oidc.tokens import digest
    from bridge.identity import Authentication, Identity
    from bridge.store import open_store

    config = load_config(config_path)
    store = open_store(config.store)
    identity = Identity(subject="0b7e4c9a-bench", username="alice", source="local",
                        email="alice@example.test").with_authentication(
        Authentication(source="local")).to_record()
    codes, refresh_tokens = [], []
    for _ in range(count):
        code = secrets.token_urlsafe(32)
        grant_id = secrets.token_urlsafe(18)
        store.put(CODE_KIND, digest(code), {
            "client_id": CLIENT_ID, "redirect_uri": CALLBACK, "scope": "openid email",
            "nonce": None, "code_challenge": None, "code_challenge_method": None,
            "identity": identity, "subject": "0b7e4c9a-bench", "grant_id": grant_id,
            "auth_time": int(time.time()), "acr": None, "amr": ["pwd"], "sid": None,
        }, 3600)
        codes.append(code)
        refresh = secrets.token_urlsafe(32)
        grant_id = secrets.token_urlsafe(18)
        store.put(GRANT_KIND, grant_id, {
            "client_id": CLIENT_ID, "party_id": CLIENT_ID, "subject": "0b7e4c9a-bench",
            "identity": identity, "scope": "openid email", "auth_time": int(time.time()),
            "acr": None, "amr": ["pwd"], "sid": None, "refresh": digest(refresh),
            "grant_id": grant_id}, 3600)
        store.put(REFRESH_KIND, digest(refresh), {"grant_id": grant_id,
                                                   "client_id": CLIENT_ID}, 3600)
        refresh_tokens.append(refresh)
    store.close()
    return codes, refresh_tokens


def start_bridge(config_path: Path, port: int, log: Path) -> subprocess.Popen:
    """`bridge serve` with one worker, pinned to the server core."""
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bridge", "serve", "--config",
         str(config_path), "--workers", "1"],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/healthz", process)
    return process


# -- the peer ---------------------------------------------------------------------------------


def start_peer(port: int, secret: str, log: Path) -> subprocess.Popen:
    """node oidc-provider, installed here on first use, pinned to the server core."""
    node_dir = WORK / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    if not (node_dir / "node_modules" / "oidc-provider").is_dir():
        (node_dir / "package.json").write_text(json.dumps(
            {"name": "bridge-bench-peer", "private": True, "type": "module"}))
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund",
                        "oidc-provider@9"], cwd=node_dir, check=True)
    shutil.copy(REPO / "bench" / "oidc_provider_peer.mjs", node_dir / "peer.mjs")
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, "node", "peer.mjs", str(port), CLIENT_ID, secret],
        cwd=node_dir, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "NODE_ENV": "production"})
    wait_for(f"http://127.0.0.1:{port}/.well-known/openid-configuration", process)
    return process


# -- load -------------------------------------------------------------------------------------


def lua_script(path: Path, body: str, auth: str, close: bool, tokens_file: Path | None,
               field: str | None = None) -> Path:
    """A wrk script POSTing the form body; with tokens_file each request uses the next token."""
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "Authorization": f"Basic {auth}"}
    if close:
        headers["Connection"] = "close"
    lua_headers = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    if tokens_file is None:
        script = (f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers = {{{lua_headers}}}\n')
    else:
        script = (
            f"local items = {{}}\nlocal i = 0\nlocal headers = {{{lua_headers}}}\n"
            f'for line in io.lines("{tokens_file}") do items[#items + 1] = line end\n'
            "request = function()\n  i = i + 1\n"
            f'  return wrk.format("POST", nil, headers, "{body}&{field}=" .. items[i])\nend\n'
        )
    path.write_text(script)
    return path


def run_wrk(url: str, script: Path, duration: int, connections: int) -> dict[str, float]:
    """Run wrk on the load core; requests/s, p50 and p99 in ms, and non-2xx count."""
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(pct: str) -> float:
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else ""}


async def _open_loop(host: str, port: int, request: bytes, rate: float, duration: float,
                     connections: int) -> list[float]:
    """Send at a fixed rate over keep-alive connections; latency from the scheduled time."""
    latencies: list[float] = []
    queue: asyncio.Queue[float] = asyncio.Queue()
    failures = 0

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            scheduled = await queue.get()
            if scheduled < 0:
                writer.close()
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
            latencies.append(time.perf_counter() - scheduled)

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter() + 0.2
    total = int(rate * duration)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in tasks:
        queue.put_nowait(-1.0)
    await asyncio.gather(*tasks)
    if failures:
        print(f"({failures} non-200 answers at fixed rate)")
    return latencies


def _raw_request(port: int, body: str, auth: str) -> bytes:
    return (f"POST /token-path HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Basic {auth}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


# -- main -------------------------------------------------------------------------------------


def measure_client_credentials(name: str, token_url: str, port: int, path: str, secret: str,
                               args: argparse.Namespace, scripts: Path) -> dict[str, object]:
    """Keep-alive and new-connection throughput, then latency at half the keep-alive peak."""
    auth = base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()
    body = "grant_type=client_credentials&scope=api.read"
    keep = lua_script(scripts / f"{name}-keep.lua", body, auth, False, None)
    close = lua_script(scripts / f"{name}-close.lua", body, auth, True, None)
    run_wrk(token_url, keep, 2, args.connections)  # warm-up
    result: dict[str, object] = {
        "keepalive": run_wrk(token_url, keep, args.duration, args.connections),
        "new_connection": run_wrk(token_url, close, args.duration, args.connections),
    }
    half = result["keepalive"]["rps"] / 2  # type: ignore[index]
    raw = _raw_request(port, body, auth).replace(b"/token-path", path.encode())
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
        "import oidc_tokens as b; "
        f"lat = asyncio.run(b._open_loop('127.0.0.1', {port}, {raw!r}, {half}, "
        f"{args.duration}, 32)); print('LATENCIES', json.dumps(lat))"
    )
    out = subprocess.run(["taskset", "-c", LOAD_CORE, sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    latencies = sorted(json.loads(out.split("LATENCIES", 1)[1]))
    result["half_load"] = {"rate": round(half), "p50_ms": statistics.median(latencies) * 1000,
                           "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}
    return result


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    run_dir = WORK / "oidc"
    scripts = run_dir / "scripts"
    port = free_port()
    config_path, secret = prepare_bridge(run_dir / "bridge", port)
    scripts.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"cpu": os.cpu_count(), "duration_s": args.duration,
                                  "connections": args.connections}
    seeded = 25000
    codes, refresh_tokens = seed_codes_and_refresh_tokens(config_path, seeded)
    (scripts / "codes.txt").write_text("\n".join(codes) + "\n")
    (scripts / "refresh.txt").write_text("\n".join(refresh_tokens) + "\n")
    bridge = start_bridge(config_path, port, run_dir / "bridge.log")
    try:
        token_url = f"http://127.0.0.1:{port}/oauth2/token"
        results["bridge_client_credentials"] = measure_client_credentials(
            "bridge", token_url, port, "/oauth2/token", secret, args, scripts)
        auth = base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()
        # Each code and refresh token is single-use: at most `seeded` requests per run.
        short = max(2, min(args.duration, 5))
        code_body = f"grant_type=authorization_code&redirect_uri={CALLBACK}"
        code_script = lua_script(scripts / "code.lua", code_body, auth, False,
                                 scripts / "codes.txt", "code")
        results["bridge_authorization_code"] = run_wrk(token_url, code_script, short,
                                                       args.connections)
        refresh_script = lua_script(scripts / "refresh.lua", "grant_type=refresh_token", auth,
                                    False, scripts / "refresh.txt", "refresh_token")
        results["bridge_refresh_token"] = run_wrk(token_url, refresh_script, short,
                                                  args.connections)
    finally:
        stop(bridge)
    if not args.no_peer:
        peer_port = free_port()
        peer = start_peer(peer_port, secret, run_dir / "peer.log")
        try:
            results["oidc_provider_client_credentials"] = measure_client_credentials(
                "peer", f"http://127.0.0.1:{peer_port}/token", peer_port, "/token", secret,
                args, scripts)
        finally:
            stop(peer)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
