"""The server-side SSO session: an opaque cookie, a record in the store, two lifetimes."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.identity import Identity
from bridge.store import Store

SESSION_KIND = "sso-session"
# Refreshing the idle deadline on every request would be a store write per page view.
TOUCH_INTERVAL_SECONDS = 60


@dataclass(frozen=True)
class SsoSession:
    """A signed-in browser: who, since when, until when, and which parties it has visited."""

    id: str
    identity: Identity
    created: float
    absolute_expiry: float
    last_seen: float
    participants: tuple[str, ...] = ()
    validated: float = 0.0

    @property
    def auth_time(self) -> float:
        """When the user last proved who they are (for max_age, ForceAuthn)."""
        auth = self.identity.authentication
        return auth.time.timestamp() if auth else self.created


def _storage_key(session_id: str) -> str:
    # Only a digest is stored: a copy of the store does not hand out live cookies.
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionManager:
    """Creates, finds, refreshes and ends SSO sessions."""

    def __init__(
        self,
        store: Store,
        idle_seconds: int,
        absolute_seconds: int,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.idle_seconds = idle_seconds
        self.absolute_seconds = absolute_seconds
        self.clock = clock

    def create(self, identity: Identity, previous_id: str | None = None) -> SsoSession:
        """Start a session under a fresh id, ending the previous one (no fixation)."""
        if previous_id:
            self.destroy(previous_id)
        now = self.clock()
        session = SsoSession(
            id=secrets.token_urlsafe(32),
            identity=identity,
            created=now,
            absolute_expiry=now + self.absolute_seconds,
            last_seen=now,
            validated=now,
        )
        self._save(session)
        return session

    def load(self, session_id: str | None) -> SsoSession | None:
        """Return the live session for a cookie value, refreshing its idle deadline."""
        if not session_id or len(session_id) > 128:
            return None
        record = self.store.get(SESSION_KIND, _storage_key(session_id))
        if record is None:
            return None
        now = self.clock()
        session = SsoSession(
            id=session_id,
            identity=Identity.from_record(record["identity"]),
            created=record["created"],
            absolute_expiry=record["absolute_expiry"],
            last_seen=record["last_seen"],
            participants=tuple(record.get("participants", ())),
            validated=record.get("validated", record["created"]),
        )
        if now >= session.absolute_expiry or now - session.last_seen >= self.idle_seconds:
            self.destroy(session_id)
            return None
        if now - session.last_seen >= TOUCH_INTERVAL_SECONDS:
            session = SsoSession(**{**session.__dict__, "last_seen": now})
            self._save(session)
        return session

    def add_participant(self, session: SsoSession, participant: str) -> SsoSession:
        """Remember a relying party this session signed in to (for single logout)."""
        if participant in session.participants:
            return session
        updated = SsoSession(
            **{**session.__dict__, "participants": (*session.participants, participant)}
        )
        self._save(updated)
        return updated

    def replace_identity(self, session: SsoSession, identity: Identity) -> SsoSession:
        """Store a freshly re-read Identity in the session and note when it was checked."""
        updated = SsoSession(
            **{**session.__dict__, "identity": identity, "validated": self.clock()}
        )
        self._save(updated)
        return updated

    def destroy(self, session_id: str) -> None:
        """End a session."""
        if session_id and len(session_id) <= 128:
            self.store.delete(SESSION_KIND, _storage_key(session_id))

    def _save(self, session: SsoSession) -> None:
        ttl = min(session.absolute_expiry, session.last_seen + self.idle_seconds) - self.clock()
        record: dict[str, Any] = {
            "identity": session.identity.to_record(),
            "created": session.created,
            "absolute_expiry": session.absolute_expiry,
            "last_seen": session.last_seen,
            "participants": list(session.participants),
            "validated": session.validated,
        }
        self.store.put(SESSION_KIND, _storage_key(session.id), record, max(ttl, 1.0))
