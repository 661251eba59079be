"""The store contract: time-limited records, versioned documents and the audit trail.

Every backend (SQLite now; PostgreSQL and Redis later) implements `Store` and passes the one
conformance suite in tests/store_conformance.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

Clock = Callable[[], float]


class StoreError(Exception):
    """Base class of every store failure."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached, is locked, or is not a usable database."""


class VersionConflict(StoreError):
    """A document was saved with an expected version that is no longer current."""


@dataclass(frozen=True)
class Document:
    """A versioned document (relying party, release rules, local user)."""

    kind: str
    key: str
    version: int
    body: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True)
class AuditEvent:
    """One audited event, such as a sign-in attempt."""

    event: str
    outcome: str
    time: datetime
    username: str | None = None
    subject: str | None = None
    source: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """What the bridge needs from persistent state; nothing a second node needs lives in memory."""

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> None:
        """Store a record that expires after ttl seconds, replacing any existing one."""

    def add(self, kind: str, key: str, value: Mapping[str, Any], ttl: float) -> bool:
        """Store a record only if no live one exists (replay caches); True if it was added."""

    def count(self, kind: str, key: str, ttl: float, by: int = 1) -> int:
        """Atomically add `by` to a counter record and return the new count (never below 0).

        A counter that is absent or expired starts from 0 and lives ttl seconds from then; a
        live one keeps its expiry (a fixed window); taking from an absent counter stores
        nothing. `get` reads it as {"count": n}.
        """

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return a live record, or None if absent or expired."""

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete a live record: at most one caller ever gets it."""

    def delete(self, kind: str, key: str) -> None:
        """Delete a record if present."""

    def get_document(self, kind: str, key: str) -> Document | None:
        """Return the current version of a document, or None."""

    def list_documents(self, kind: str) -> list[Document]:
        """Return every document of a kind, ordered by key."""

    def save_document(
        self, kind: str, key: str, body: Mapping[str, Any], expected_version: int
    ) -> Document:
        """Save a document if its current version is expected_version (0: must not exist yet).

        Raises VersionConflict otherwise; returns the saved document with its new version.
        """

    def delete_document(self, kind: str, key: str, expected_version: int) -> None:
        """Delete a document at expected_version; raises VersionConflict if it moved on."""

    def append_audit(self, event: AuditEvent) -> None:
        """Append an event to the audit trail."""

    def query_audit(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        username: str | None = None,
        outcome: str | None = None,
        event: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Return matching audit events, newest first."""

    def purge_expired(self, audit_before: datetime | None = None) -> int:
        """Delete expired records (and audit events older than audit_before); return the count."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers a trivial read and write check."""

    def close(self) -> None:
        """Release connections."""


def open_store(
    settings: Any, clock: Clock | None = None, *, tolerate_unavailable: bool = False
) -> Store:
    """Open the backend named by the store section of the config.

    tolerate_unavailable: return a store that retries on every use instead of raising now
    (server workers start and report not-ready while the store is down).
    """
    from bridge.store.sqlite import SQLiteStore

    if settings.type == "sqlite":
        return SQLiteStore(
            settings.path,
            busy_timeout_ms=settings.busy_timeout_ms,
            clock=clock,
            tolerate_unavailable=tolerate_unavailable,
        )
    raise ValueError(f"unknown store type {settings.type!r}")
