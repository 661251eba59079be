"""Token endpoint benchmark: the bridge side by side with node oidc-provider, same run.

All servers run at once, each pinned to core 0 (one worker / one process); the load generator
runs on core 1. Measured: client_credentials grants per second with keep-alive and with a new
connection per request (wrk), in rounds that alternate between the servers so that other work
on a shared machine hits each of them alike (median and best of the rounds are kept); p50/p99
at half of each server's median keep-alive peak (an open-loop generator below, latency taken
from each request's scheduled time); and the bridge's authorization_code exchanges and
refresh_token grants per second. Every server signs ES256 JWT access tokens (RFC 9068). The
bridge runs with its default logging (INFO: one JSON access-log line per request, to a file)
under each `server.engine` given.

Each wrk run also gives requests per CPU-second of the server's processes (from /proc): the
wall-clock rate says how much of the core a server got, the per-CPU-second rate what it did
with it.

    .venv/bin/python bench/oidc_tokens.py [--duration 5] [--rounds 3] [--connections 16]
                                          [--engines granian,gunicorn] [--no-peer]

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
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.process_cpu import group_cpu  # noqa: E402 - the repository is on the path now
from tests.support import free_port, stop  # noqa: E402

WORK = REPO / "bench" / ".work"
CLIENT_ID = "bench"
CALLBACK = "http://127.0.0.1:9/cb"
SERVER_CORE = "0"
LOAD_CORE = "1"
CC_BODY = "grant_type=client_credentials&scope=api.read"
SEEDED = 25000


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


# -- the bridge -------------------------------------------------------------------------------


def prepare_bridge(directory: Path, port: int, engine: str) -> tuple[Path, str]:
    """A bridge config with keys and one confidential client; returns (config, secret)."""
    import yaml

    from bridge import keys
    from bridge.config import load_config
    from bridge.frontends.oidc.clients import generate_secret
    from bridge.relying_parties import OidcRelyingParty, RelyingPartyRegistry
    from bridge.store import open_store

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config_path = directory / "bridge.yaml"
    config_path.write_text(yaml.safe_dump({
        "server": {"public_url": f"http://127.0.0.1:{port}", "bind": f"127.0.0.1:{port}",
                   "engine": engine},
        "store": {"type": "sqlite", "path": "data/bridge.db"},
        "keys": {"dir": "certs"},
        "sources": [{"id": "local", "type": "embedded"}],
        "logging": {"format": "json", "level": "INFO"},
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
    from bridge.identity import Authentication
    from bridge.sources.embedded import EmbeddedDirectory
    from bridge.store import open_store

    config = load_config(config_path)
    store = open_store(config.store)
    # A real directory user: a refresh re-reads the user from its source, and a user the source
    # no longer knows would turn every refresh into invalid_grant.
    directory = EmbeddedDirectory(store, "local")
    user = directory.add_user("alice", secrets.token_urlsafe(16), email="alice@example.test")
    subject = user.id
    identity = directory.identity(user).with_authentication(
        Authentication(source="local")).to_record()
    codes, refresh_tokens = [], []
    for _ in range(count):
        code = secrets.token_urlsafe(32)
        grant_id = secrets.token_urlsafe(18)
        store.put(CODE_KIND, digest(code), {
            "client_id": CLIENT_ID, "redirect_uri": CALLBACK, "scope": "openid email",
            "nonce": None, "code_challenge": None, "code_challenge_method": None,
            "identity": identity, "subject": subject, "grant_id": grant_id,
            "auth_time": int(time.time()), "acr": None, "amr": ["pwd"], "sid": None,
        }, 3600)
        codes.append(code)
        refresh = secrets.token_urlsafe(32)
        grant_id = secrets.token_urlsafe(18)
        store.put(GRANT_KIND, grant_id, {
            "client_id": CLIENT_ID, "party_id": CLIENT_ID, "subject": subject,
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


def cpu_seconds(process: subprocess.Popen | None) -> float:
    """User + system CPU time of the server's processes (it leads its own process group)."""
    return 0.0 if process is None else group_cpu(process.pid)


def run_wrk(url: str, script: Path, duration: int, connections: int,
            server: subprocess.Popen | None = None) -> dict[str, float]:
    """Run wrk on the load core; requests/s, p50 and p99 in ms, non-2xx count, and requests
    per CPU-second of the server's processes."""
    before = cpu_seconds(server)
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(server) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def latency(pct: str) -> float:
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "server_cpu_s": round(used, 2),
            "per_cpu_second": round(total / used) if used > 0 else None,
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


@dataclass
class Target:
    """One server under test and how to ask it for a client_credentials token."""

    name: str
    process: subprocess.Popen
    port: int
    path: str
    secret: str
    scripts: dict[str, Path]

    @property
    def url(self) -> str:
        """The token endpoint."""
        return f"http://127.0.0.1:{self.port}{self.path}"


def target(name: str, process: subprocess.Popen, port: int, path: str, secret: str,
           scripts: Path) -> Target:
    """A server with its wrk scripts (keep-alive and a new connection per request)."""
    auth = base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()
    return Target(name, process, port, path, secret, {
        "keepalive": lua_script(scripts / f"{name}-keep.lua", CC_BODY, auth, False, None),
        "new_connection": lua_script(scripts / f"{name}-close.lua", CC_BODY, auth, True, None),
    })


def half_load_latency(server: Target, rate: float, duration: int) -> dict[str, float]:
    """p50/p99 at a fixed rate from the open-loop generator (on the load core)."""
    auth = base64.b64encode(f"{CLIENT_ID}:{server.secret}".encode()).decode()
    raw = _raw_request(server.port, CC_BODY, auth).replace(b"/token-path", server.path.encode())
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
        "import oidc_tokens as b; "
        f"lat = asyncio.run(b._open_loop('127.0.0.1', {server.port}, {raw!r}, {rate}, "
        f"{duration}, 32)); print('LATENCIES', json.dumps(lat))"
    )
    out = subprocess.run(["taskset", "-c", LOAD_CORE, sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    latencies = sorted(json.loads(out.split("LATENCIES", 1)[1]))
    return {"rate": round(rate), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2)}


def measure_client_credentials(servers: list[Target], args: argparse.Namespace
                               ) -> dict[str, dict[str, object]]:
    """Keep-alive and new-connection throughput, taken in rounds that alternate between the
    servers (so a burst of other work on the machine hits each of them alike), then latency
    at half of each server's median keep-alive peak."""
    results: dict[str, dict[str, object]] = {server.name: {} for server in servers}
    for server in servers:
        run_wrk(server.url, server.scripts["keepalive"], 2, args.connections)  # warm-up
    for mode in ("keepalive", "new_connection"):
        runs: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
        for _ in range(args.rounds):
            for server in servers:
                runs[server.name].append(run_wrk(server.url, server.scripts[mode],
                                                 args.duration, args.connections,
                                                 server.process))
        for server in servers:
            ordered = sorted(runs[server.name], key=lambda run: run["rps"])
            results[server.name][mode] = {"median": ordered[len(ordered) // 2],
                                          "best": ordered[-1], "rounds": ordered}
    for server in servers:
        peak = results[server.name]["keepalive"]["median"]["rps"]  # type: ignore[index]
        results[server.name]["half_load"] = half_load_latency(server, peak / 2, args.duration)
    return results


def start_bridge_target(engine: str, run_dir: Path, scripts: Path
                        ) -> tuple[Target, Path, str]:
    """A prepared bridge under one engine, seeded with codes and refresh tokens."""
    port = free_port()
    config_path, secret = prepare_bridge(run_dir / f"bridge-{engine}", port, engine)
    codes, refresh_tokens = seed_codes_and_refresh_tokens(config_path, SEEDED)
    (scripts / f"codes-{engine}.txt").write_text("\n".join(codes) + "\n")
    (scripts / f"refresh-{engine}.txt").write_text("\n".join(refresh_tokens) + "\n")
    process = start_bridge(config_path, port, run_dir / f"bridge-{engine}.log")
    return (target(f"bridge_{engine}", process, port, "/oauth2/token", secret, scripts),
            config_path, secret)


def measure_code_and_refresh(server: Target, engine: str, args: argparse.Namespace,
                             scripts: Path) -> dict[str, object]:
    """authorization_code exchanges and refresh_token grants (each value is single-use)."""
    auth = base64.b64encode(f"{CLIENT_ID}:{server.secret}".encode()).decode()
    short = max(2, min(args.duration, 5))  # at most SEEDED requests per kind
    code_body = f"grant_type=authorization_code&redirect_uri={CALLBACK}"
    code_script = lua_script(scripts / f"code-{engine}.lua", code_body, auth, False,
                             scripts / f"codes-{engine}.txt", "code")
    refresh_script = lua_script(scripts / f"refresh-{engine}.lua", "grant_type=refresh_token",
                                auth, False, scripts / f"refresh-{engine}.txt", "refresh_token")
    return {
        "authorization_code": run_wrk(server.url, code_script, short, args.connections,
                                      server.process),
        "refresh_token": run_wrk(server.url, refresh_script, short, args.connections,
                                 server.process),
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per server and mode (median and best kept)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--engines", default="granian,gunicorn",
                        help="bridge server engines to measure, comma-separated")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    run_dir = WORK / "oidc"
    scripts = run_dir / "scripts"
    shutil.rmtree(run_dir, ignore_errors=True)
    scripts.mkdir(parents=True)
    results: dict[str, object] = {"cpu": os.cpu_count(), "duration_s": args.duration,
                                  "rounds": args.rounds, "connections": args.connections,
                                  "load_average_at_start": os.getloadavg()}
    servers: list[Target] = []
    try:
        for engine in args.engines.split(","):
            servers.append(start_bridge_target(engine, run_dir, scripts)[0])
        if not args.no_peer:
            peer_port = free_port()
            peer_secret = secrets.token_urlsafe(32)
            peer = start_peer(peer_port, peer_secret, run_dir / "peer.log")
            servers.append(target("oidc_provider", peer, peer_port, "/token", peer_secret,
                                  scripts))
        for name, figures in measure_client_credentials(servers, args).items():
            results[name] = {"client_credentials": figures}
        for server in servers:
            if server.name.startswith("bridge_"):
                engine = server.name.removeprefix("bridge_")
                results[server.name].update(  # type: ignore[union-attr]
                    measure_code_and_refresh(server, engine, args, scripts))
    finally:
        for server in servers:
            stop(server.process)
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
