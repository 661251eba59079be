"""The embedded directory: users and groups kept in the bridge's store, argon2id hashes."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bridge.identity import Identity
from bridge.sources import (
    Admission,
    AuthResult,
    Outcome,
    SourceUnavailable,
    credentials_acceptable,
)
from bridge.store import Document, Store, StoreError, VersionConflict

USER_KIND = "embedded-user"
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\-]{0,63}$")
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]{0,63}$")


class DirectoryError(Exception):
    """An embedded-directory administration request that cannot be carried out."""


@dataclass(frozen=True)
class LocalUser:
    """One user of the embedded directory as stored."""

    id: str
    username: str
    password_hash: str
    display_name: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    disabled: bool = False
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    password_changed: str | None = None

    def to_body(self) -> dict[str, Any]:
        """Serialise for the store."""
        return {
            "id": self.id,
            "username": self.username,
            "password_hash": self.password_hash,
            "display_name": self.display_name,
            "email": self.email,
            "groups": list(self.groups),
            "disabled": self.disabled,
            "created": self.created,
            "password_changed": self.password_changed,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LocalUser:
        """Rebuild from a stored body."""
        return cls(**{**body, "groups": tuple(body.get("groups", ()))})


def generate_password() -> str:
    """A random password for a new account, shown once (about 120 bits)."""
    return secrets.token_urlsafe(15)


class EmbeddedDirectory:
    """Password source and user administration over the store."""

    def __init__(self, store: Store, source_id: str, display_name: str = "Local accounts"):
        self.store = store
        self.id = source_id
        self.display_name = display_name
        # argon2-cffi's defaults are RFC 9106's second recommended option (argon2id).
        self._hasher = PasswordHasher()
        self._dummy: str | None = None

    @staticmethod
    def _key(username: str) -> str:
        return username.strip().lower()

    def _load(self, username: str) -> tuple[LocalUser, Document] | None:
        document = self.store.get_document(USER_KIND, self._key(username))
        if document is None:
            return None
        return LocalUser.from_body(document.body), document

    def authenticate(
        self, username: str, password: str, admit: Admission | None = None
    ) -> AuthResult:
        """Check a password against the stored argon2id hash."""
        if not credentials_acceptable(username, password):
            return AuthResult(Outcome.REJECTED_INPUT)
        try:
            found = self._load(username)
        except StoreError as exc:
            raise SourceUnavailable("the embedded directory's store is unavailable") from exc
        if found is None:
            self._verify(self._dummy_hash(), password)
            return AuthResult(Outcome.UNKNOWN_USER)
        user, document = found
        if admit is not None and not admit(user.username):
            return AuthResult(Outcome.THROTTLED)
        if not self._verify(user.password_hash, password):
            return AuthResult(Outcome.INVALID_CREDENTIALS)
        if user.disabled:
            return AuthResult(Outcome.DISABLED)
        if self._hasher.check_needs_rehash(user.password_hash):
            self._rehash(user, document, password)
        return AuthResult(Outcome.SUCCESS, self.identity(user))

    def _dummy_hash(self) -> str:
        # Verifying against this when the user is unknown keeps both answers equally slow;
        # made on first use so administrative commands do not pay for it.
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _rehash(self, user: LocalUser, document: Document, password: str) -> None:
        body = {**user.to_body(), "password_hash": self._hasher.hash(password)}
        try:
            self.store.save_document(USER_KIND, document.key, body, document.version)
        except StoreError:
            pass  # the next sign-in tries again; the old hash still verifies

    def identity(self, user: LocalUser) -> Identity:
        """The canonical Identity of a local user."""
        return Identity(
            subject=user.id,
            username=user.username,
            source=self.id,
            upn=user.email,
            email=user.email,
            display_name=user.display_name or user.username,
            groups=tuple(sorted(user.groups)),
        )

    def refresh(self, identity: Identity) -> Identity | None:
        """The user's current Identity (groups, names), or None if disabled or removed."""
        try:
            found = self._load(identity.username)
        except StoreError as exc:
            raise SourceUnavailable("the embedded directory's store is unavailable") from exc
        if found is None or found[0].disabled or found[0].id != identity.subject:
            return None
        return self.identity(found[0])

    def check(self) -> None:
        """The embedded directory is available whenever its store is."""
        self.store.ping()

    # Administration (the `bridge users` commands).

    def add_user(
        self,
        username: str,
        password: str,
        *,
        display_name: str | None = None,
        email: str | None = None,
        groups: Iterable[str] = (),
    ) -> LocalUser:
        """Create a user; DirectoryError if the name is invalid or taken."""
        self._check_username(username)
        self._check_password(password)
        groups = tuple(sorted(set(groups)))
        for group in groups:
            if not GROUP_PATTERN.fullmatch(group):
                raise DirectoryError(f"invalid group name {group!r}")
        user = LocalUser(
            id=str(uuid.uuid4()),
            username=username,
            password_hash=self._hasher.hash(password),
            display_name=display_name,
            email=email,
            groups=groups,
        )
        try:
            self.store.save_document(USER_KIND, self._key(username), user.to_body(), 0)
        except VersionConflict:
            raise DirectoryError(f"user {username!r} already exists") from None
        return user

    def set_password(self, username: str, password: str) -> LocalUser:
        """Replace a user's password."""
        self._check_password(password)
        now = datetime.now(UTC).isoformat()
        return self._update(
            username, password_hash=self._hasher.hash(password), password_changed=now
        )

    def set_disabled(self, username: str, disabled: bool) -> LocalUser:
        """Disable or re-enable a user."""
        return self._update(username, disabled=disabled)

    def get_user(self, username: str) -> LocalUser | None:
        """Look a user up by name."""
        found = self._load(username)
        return found[0] if found else None

    def list_users(self) -> list[LocalUser]:
        """Every user, ordered by name."""
        return [LocalUser.from_body(d.body) for d in self.store.list_documents(USER_KIND)]

    def _update(self, username: str, **changes: Any) -> LocalUser:
        found = self._load(username)
        if found is None:
            raise DirectoryError(f"no user {username!r}")
        user, document = found
        body = {**user.to_body(), **changes}
        try:
            self.store.save_document(USER_KIND, document.key, body, document.version)
        except VersionConflict:
            raise DirectoryError(f"user {username!r} changed meanwhile; try again") from None
        return LocalUser.from_body(body)

    @staticmethod
    def _check_username(username: str) -> None:
        if not USERNAME_PATTERN.fullmatch(username):
            raise DirectoryError(
                "a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                "letter or digit"
            )

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password) < 12:
            raise DirectoryError("a password needs at least 12 characters")
        if not credentials_acceptable("x", password):
            raise DirectoryError("a password cannot be blank or contain control characters")
