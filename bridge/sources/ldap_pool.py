"""Connections to several directory servers: per-server health, a circuit breaker, reuse.

ldap3's `ServerPool` keeps its rotation and "exhausted" state inside each Connection, cannot
tell a hung server (receive timeout after connect) from any other failure, and retries nothing
once a request has been sent. Here each domain controller is an ldap3 `Server` with one health
record shared by every connection of the process, and an operation that fails for network
reasons is run again on the next server. Connections are kept open and reused: service-account
connections stay bound, user connections are re-bound for every sign-in (ldap3 binds its client
socket to port 0, so one new connection per sign-in would exhaust ephemeral ports).
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from ldap3 import NONE, SIMPLE, SYNC, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPStartTLSError,
)

from bridge.sources import SourceUnavailable
from bridge.sources.ldap_config import LdapSourceConfig, ServerAddress

log = logging.getLogger("bridge.sources.ldap")
T = TypeVar("T")
Kind = Literal["service", "user"]
NETWORK_ERRORS = (LDAPCommunicationError, LDAPCertificateError, LDAPStartTLSError, OSError)


class ServiceBindRefused(SourceUnavailable):
    """The directory refused the service account's own credentials (a configuration error)."""


class ConnectionLost(Exception):
    """Raised by an operation when its connection turned out to be unusable."""


def _is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


@dataclass
class DomainController:
    """One server of the pool: its ldap3 Server, its health, its idle connections."""

    address: ServerAddress
    server: Server
    failures: int = 0
    open_until: float = 0.0
    last_error: str | None = None
    idle: dict[str, list[Connection]] = field(
        default_factory=lambda: {"service": [], "user": []}
    )
    opened: int = 0  # connections opened since start (for tests and the benchmark)


class NoDelayTls(Tls):
    """ldap3's Tls, with Nagle's algorithm off on the socket before the TLS handshake.

    With it on, the handshake of every new LDAPS or StartTLS connection stalled ~40 ms (a small
    write held back until the peer's delayed ACK): 46 ms per new connection against slapd
    here, 2.6 ms without it. That is what a failover or a DC coming back costs per connection.
    """

    def wrap_socket(self, connection: Connection, do_handshake: bool = False) -> None:
        """Turn Nagle off, then wrap as ldap3 does."""
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().wrap_socket(connection, do_handshake)


class ConnectionPool:
    """Runs operations on pooled connections, failing over between domain controllers."""

    def __init__(
        self, config: LdapSourceConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._rotation = itertools.count()
        tls = None
        if config.uses_tls:
            # ldap3 verifies nothing unless told to: require a certificate that chains to the
            # configured CA (or the system's) and names the host we dialled.
            tls = NoDelayTls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(config.ca_file) if config.ca_file else None,
            )
        elif config.insecure_plain_ldap:
            log.warning(
                "LDAP source sends passwords without TLS (insecure_plain_ldap is set)",
                extra={"source": config.id},
            )
        self.controllers = [
            DomainController(
                address=address,
                server=Server(
                    address.host,
                    port=address.port,
                    use_ssl=address.use_ssl,
                    tls=tls,
                    get_info=NONE,
                    connect_timeout=config.connect_timeout_seconds,
                ),
            )
            for address in config.addresses
        ]

    # Health and the circuit breaker.

    def _order(self) -> list[DomainController]:
        """The controllers to try, healthy ones first, in the configured strategy's order."""
        controllers = list(self.controllers)
        if self.config.strategy == "round_robin" and len(controllers) > 1:
            start = next(self._rotation) % len(controllers)
            controllers = controllers[start:] + controllers[:start]
        now = self.clock()
        with self._lock:
            ready = [dc for dc in controllers if dc.open_until <= now]
            if not ready:
                # Every server is set aside: try the one that has rested longest, so a
                # single-server setup recovers as soon as its server is back.
                ready = [min(controllers, key=lambda dc: dc.open_until)]
            # A server whose breaker just expired gets one trial request (half-open); others
            # keep skipping it until that trial has succeeded.
            for dc in ready:
                if dc.failures >= self.config.circuit_breaker.failures:
                    dc.open_until = now + self.config.circuit_breaker.open_seconds
        return ready

    def _record_failure(self, dc: DomainController, exc: BaseException) -> None:
        with self._lock:
            dc.failures += 1
            dc.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if dc.failures >= self.config.circuit_breaker.failures:
                dc.open_until = self.clock() + self.config.circuit_breaker.open_seconds
            idle = [c for kind in dc.idle.values() for c in kind]
            for kind in dc.idle.values():
                kind.clear()
        for connection in idle:
            _discard(connection)
        log.warning(
            "directory server failed",
            extra={"source": self.config.id, "server": dc.address.url, "error": dc.last_error},
        )

    def _record_success(self, dc: DomainController) -> None:
        if dc.failures or dc.open_until:
            with self._lock:
                if dc.failures:
                    log.info(
                        "directory server is answering again",
                        extra={"source": self.config.id, "server": dc.address.url},
                    )
                dc.failures = 0
                dc.open_until = 0.0
                dc.last_error = None

    def health(self) -> list[dict[str, object]]:
        """Each server's state: closed (in use) or open (set aside), failures, last error."""
        now = self.clock()
        return [
            {
                "server": dc.address.url,
                "state": "open" if dc.open_until > now else "closed",
                "failures": dc.failures,
                "last_error": dc.last_error,
                "idle_connections": {k: len(v) for k, v in dc.idle.items()},
                "connections_opened": dc.opened,
            }
            for dc in self.controllers
        ]

    # Connections.

    def open_connection(self, dc: DomainController, kind: Kind) -> Connection:
        """Open (and for the service account, bind) a new connection to one server."""
        connection = Connection(
            dc.server,
            user=self.config.bind_dn if kind == "service" else None,
            password=self.config.bind_password.get_secret_value() if kind == "service" else None,
            authentication=SIMPLE if kind == "service" else None,
            client_strategy=SYNC,
            auto_bind=False,
            receive_timeout=self.config.receive_timeout_seconds,
            auto_referrals=False,  # never chase a referral with anyone's credentials
            raise_exceptions=False,
            check_names=False,
            read_only=False,
        )
        # ldap3 keeps its own per-address "unavailable" mark for a while after a failure,
        # which would refuse a DC that has just come back: health is decided here instead.
        for address in dc.server.address_info:
            address[5] = address[6] = None
        try:
            connection.open()
            if self.config.start_tls and not connection.start_tls():
                raise LDAPStartTLSError(f"StartTLS refused: {connection.result}")
            dc.opened += 1
            if kind == "service" and not connection.bind():
                result = connection.result or {}
                _discard(connection)
                raise ServiceBindRefused(
                    f"{dc.address.url} refused the service account: "
                    f"{result.get('description')} {result.get('message', '')}".strip()
                )
        except NETWORK_ERRORS:
            _discard(connection)
            raise
        return connection

    def _checkout(self, dc: DomainController, kind: Kind) -> tuple[Connection, bool]:
        with self._lock:
            idle = dc.idle[kind]
            if idle:
                return idle.pop(), True
        return self.open_connection(dc, kind), False

    def _checkin(self, dc: DomainController, kind: Kind, connection: Connection) -> None:
        with self._lock:
            idle = dc.idle[kind]
            if len(idle) < self.config.pool_size and not connection.closed:
                idle.append(connection)
                return
        _discard(connection)

    def run(self, kind: Kind, operation: Callable[[Connection], T]) -> T:
        """Run an operation on a pooled connection, failing over on network errors.

        An error on a reused connection that is not a timeout (the server closed it, e.g. after
        a restart) is retried once on a fresh connection to the same server before the server
        counts as failed. SourceUnavailable when no server could run it.
        """
        errors: list[str] = []
        for dc in self._order():
            attempts = 2
            while attempts:
                attempts -= 1
                try:
                    connection, reused = self._checkout(dc, kind)
                except ServiceBindRefused:
                    raise
                except NETWORK_ERRORS as exc:
                    self._record_failure(dc, exc)
                    errors.append(f"{dc.address.url}: {exc}")
                    break
                try:
                    result = operation(connection)
                except (*NETWORK_ERRORS, ConnectionLost) as exc:
                    _discard(connection)
                    if reused and not _is_timeout(exc) and attempts:
                        continue
                    self._record_failure(dc, exc)
                    errors.append(f"{dc.address.url}: {exc}")
                    break
                except BaseException:
                    _discard(connection)
                    raise
                self._record_success(dc)
                self._checkin(dc, kind, connection)
                return result
        raise SourceUnavailable("no directory server answered: " + "; ".join(errors)[:500])

    def servers(self) -> Iterator[DomainController]:
        """Every configured server, in configuration order."""
        return iter(self.controllers)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle = [c for dc in self.controllers for kind in dc.idle.values() for c in kind]
            for dc in self.controllers:
                for kind in dc.idle.values():
                    kind.clear()
        for connection in idle:
            _discard(connection)


def _discard(connection: Connection) -> None:
    """Close a connection's socket without sending anything to a server that may be hung."""
    try:
        connection.strategy.close()
    except Exception:  # noqa: BLE001 - the socket may already be gone; nothing to recover
        pass
    connection.closed = True
