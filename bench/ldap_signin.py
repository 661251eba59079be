"""Benchmark: sign-ins through the bridge against local Samba AD and OpenLDAP, beside the floor.

Run: .venv/bin/python bench/ldap_signin.py [--seconds 5]
(root, with Debian's samba and slapd installed: scripts/test installs them; nothing else may
listen on 127.0.0.1:636/389 meanwhile.)

Prints, in one run, for each directory:
- the floor: a raw ldap3 bind loop, opening a new LDAPS connection per bind, and re-binding
  pooled connections (1 and 8 threads);
- the bridge: POST /login sign-ins per second and p50/p99 latency with 1, 8 and 32 concurrent
  clients, against a live bridge (gunicorn, 2 workers x 4 threads);
- the bridge's own CPU per sign-in with the user bind replaced by a no-op (in-process, Flask
  test client, the searches still going to the directory), and how many LDAP connections the
  source opened during the steady-state run (the target is none).
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from ldap3 import NONE, SIMPLE, Connection, Server, Tls  # noqa: E402

from tests.ldap.conftest import (  # noqa: E402
    ad_source,
    live_bridge,
    openldap_source,
    write_ldap_config,
)
from tests.ldap.directories import SambaDC, Slapd, TestCA  # noqa: E402
from tests.support import browser_client, form_fields  # noqa: E402

WORK = REPO / "bench" / ".work" / "ldap"


def run_for(seconds: float, threads: int, action: Callable[[int], None]) -> list[float]:
    """Run action(thread_index) in a loop on N threads for a while; return each latency."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop_at = time.monotonic() + seconds
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                action(index)
                latencies[index].append(time.perf_counter() - started)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return [x for per in latencies for x in per]


def report(label: str, latencies: list[float], seconds: float) -> float:
    """Print rate and p50/p99; return the rate."""
    ordered = sorted(latencies)
    rate = len(ordered) / seconds
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"  {label:48} {rate:8.0f}/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   n={len(ordered)}")
    return rate


def raw_floor(name: str, host: str, port: int, ca: Path, dn: str, password: str,
              seconds: float) -> float:
    """ldap3 bind loops straight against the server: new connection each time, and rebinding."""
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca))
    server = Server(host, port=port, use_ssl=True, tls=tls, get_info=NONE, connect_timeout=3)

    def fresh(_: int) -> None:
        connection = Connection(server, user=dn, password=password, authentication=SIMPLE,
                                receive_timeout=5)
        assert connection.bind(), connection.result
        connection.unbind()

    pooled = [Connection(server, user=dn, password=password, authentication=SIMPLE,
                         receive_timeout=5) for _ in range(8)]
    for connection in pooled:
        connection.open()

    def rebind(index: int) -> None:
        assert pooled[index].bind(), pooled[index].result

    print(f"{name}: raw ldap3 floor")
    report("new LDAPS connection per bind, 1 thread", run_for(seconds, 1, fresh), seconds)
    report("new LDAPS connection per bind, 8 threads", run_for(seconds, 8, fresh), seconds)
    report("rebind pooled connections, 1 thread", run_for(seconds, 1, rebind), seconds)
    best = report("rebind pooled connections, 8 threads", run_for(seconds, 8, rebind), seconds)
    for connection in pooled:
        connection.unbind()
    return best


def bridge_rates(name: str, url: str, username: str, password: str, seconds: float) -> float:
    """POST /login with 1, 8 and 32 concurrent browser-like clients."""
    print(f"{name}: bridge sign-ins (POST /login -> 303 with a new session)")
    best = 0.0
    for clients in (1, 8, 32):
        sessions = [browser_client() for _ in range(clients)]
        forms = []
        for session in sessions:
            page = session.get(url + "/login")
            forms.append({**form_fields(page.text), "username": username, "password": password})

        def sign_in(index: int, sessions=sessions, forms=forms) -> None:
            response = sessions[index].post(url + "/login", data=forms[index],
                                            allow_redirects=False)
            assert response.status_code == 303, response.status_code

        best = max(best, report(f"{clients} concurrent clients",
                                run_for(seconds, clients, sign_in), seconds))
    return best


def bridge_cpu(name: str, config_path: Path, username: str, password: str, count: int) -> None:
    """In-process CPU per sign-in with the bind replaced by a no-op; connections opened."""
    from bridge.app import create_app
    from bridge.sources.ldap import LdapSource

    app = create_app(config_path=config_path)
    logging.disable(logging.INFO)  # the access log would drown the figures
    source = next(s for s in app.extensions["bridge"].sources if isinstance(s, LdapSource))
    client = app.test_client()
    page = client.get("/login")
    form = {**form_fields(page.get_data(as_text=True)), "username": username,
            "password": password}

    def sign_in() -> None:
        response = client.post("/login", data=form)
        assert response.status_code == 303, response.status_code

    for _ in range(20):  # warm up: pooled connections, SID cache, templates
        sign_in()
    opened = sum(dc.opened for dc in source.pool.controllers)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        sign_in()
    real_cpu = (time.process_time() - cpu) / count * 1000
    real_wall = (time.perf_counter() - wall) / count * 1000
    opened_during = sum(dc.opened for dc in source.pool.controllers) - opened
    source._bind = lambda dn, pw: (True, {"result": 0})  # type: ignore[method-assign]
    cpu = time.process_time()
    for _ in range(count):
        sign_in()
    noop_cpu = (time.process_time() - cpu) / count * 1000
    print(f"{name}: bridge in-process, {count} sign-ins")
    print(f"  CPU per sign-in, real bind                        {real_cpu:6.2f} ms "
          f"(wall {real_wall:.2f} ms)")
    print(f"  CPU per sign-in, bind replaced by a no-op         {noop_cpu:6.2f} ms")
    print(f"  new LDAP connections opened during the {count} sign-ins: {opened_during}")
    app.extensions["bridge"].store.close()


def main() -> None:
    """Start the directories, run every measurement, print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--cpu-count", type=int, default=300)
    args = parser.parse_args()
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ca = TestCA(WORK / "ca")
    slapd = Slapd(WORK / "slapd", ca)
    slapd.configure()
    slapd.start()
    slapd.seed()
    started = time.monotonic()
    samba = SambaDC(WORK / "samba", ca)
    samba.provision()
    samba.start()
    print(f"(Samba provisioned and started in {time.monotonic() - started:.1f} s)")
    try:
        targets = [
            ("OpenLDAP slapd 2.5", slapd.ldaps_port, "uid=alice,ou=people,dc=example,dc=test",
             slapd.users["alice"].password, openldap_source(slapd, ca.ca_file),
             slapd.service_password),
            ("Samba 4.17 AD DC", samba.ldaps_port,
             "alice@corp.example.test",  # AD binds by UPN too
             samba.users["alice"].password, ad_source(samba, ca.ca_file),
             samba.users["svc-bridge"].password),
        ]
        for name, port, dn, password, source, service_password in targets:
            floor = raw_floor(name, "127.0.0.1", port, ca.ca_file, dn, password, args.seconds)
            path = write_ldap_config(WORK / source["id"], source, service_password)
            with live_bridge(path, workers=2) as live:
                requests.get(live.url + "/readyz", timeout=10)
                best = bridge_rates(name, live.url, "alice", password, args.seconds)
            print(f"  bridge best / raw pooled floor (8 threads): {best / floor:.2f}")
            bridge_cpu(name, path, "alice", password, args.cpu_count)
            print()
    finally:
        samba.stop()
        slapd.stop()


if __name__ == "__main__":
    main()
