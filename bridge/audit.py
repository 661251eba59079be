"""The stored audit trail of sign-ins: who, from where, which source, what outcome."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.store import AuditEvent, Store, StoreError

log = logging.getLogger("bridge.audit")
MAX_FIELD_LENGTH = 256
PURGE_INTERVAL_SECONDS = 3600


def printable(value: str | None, limit: int = MAX_FIELD_LENGTH) -> str | None:
    """Make user-supplied text safe to store and show: no control characters, bounded length."""
    if value is None:
        return None
    cleaned = value if value.isprintable() else "".join(
        c if c.isprintable() else "\ufffd" for c in value
    )
    if len(cleaned) > limit:
        return cleaned[:limit] + f"...[{len(value)} chars]"
    return cleaned


class AuditTrail:
    """Writes audit events to the store; a store failure is logged, never raised to the user."""

    def __init__(self, store: Store, retention_days: int):
        self.store = store
        self.retention = timedelta(days=retention_days)
        self._next_purge = 0.0

    def record(
        self,
        event: str,
        outcome: str,
        *,
        username: str | None = None,
        subject: str | None = None,
        source: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        **detail: Any,
    ) -> bool:
        """Append one event; returns False (and logs) if the store could not take it."""
        audit_event = AuditEvent(
            event=event,
            outcome=outcome,
            time=datetime.now(UTC),
            username=printable(username),
            subject=subject,
            source=source,
            client_ip=printable(client_ip, 64),
            user_agent=printable(user_agent),
            request_id=request_id,
            detail=detail,
        )
        try:
            self.store.append_audit(audit_event)
            self._purge_old()
        except StoreError:
            log.error("audit event could not be stored", extra={"event": event})
            return False
        return True

    def _purge_old(self) -> None:
        # Hourly per process is plenty; every node doing it is harmless (idempotent deletes).
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
            self.store.purge_expired(audit_before=datetime.now(UTC) - self.retention)
