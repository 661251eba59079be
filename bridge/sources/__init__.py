"""Identity sources: they only authenticate and return a canonical Identity.

Sources are shaped by capability (as Dex does): a password source checks a username and
password; a redirect source (Entra ID, upstream SAML IdPs; later issues) hands the browser to
another party. A wrong password and an unknown user are the same answer to the outside, but are
told apart here so the audit trail and lockout logic can see them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from bridge.identity import Identity

MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 1024


# The refusal a PasswordChangeSource gives for a wrong username or current password (the
# change-password page counts it as a failed sign-in).
WRONG_CREDENTIALS = "The username or current password is incorrect."
# The refusal it gives when its admit() hook said no: the current password was never tried.
TOO_MANY_ATTEMPTS = "Too many failed sign-ins. Wait a few minutes, then try again."


class Outcome(enum.StrEnum):
    """Why a sign-in attempt ended the way it did (internal; users see a generic message)."""

    SUCCESS = "success"
    INVALID_CREDENTIALS = "invalid_credentials"
    UNKNOWN_USER = "unknown_user"
    REJECTED_INPUT = "rejected_input"
    DISABLED = "disabled"
    SOURCE_UNAVAILABLE = "source_unavailable"
    # Directory account states (Active Directory bind sub-codes and computed flags).
    LOCKED = "locked"
    ACCOUNT_EXPIRED = "account_expired"
    PASSWORD_EXPIRED = "password_expired"
    MUST_CHANGE_PASSWORD = "must_change_password"
    LOGON_HOURS = "logon_hours"
    WORKSTATION_RESTRICTED = "workstation_restricted"
    # Refused by the bridge's sign-in protection before any password was checked.
    THROTTLED = "throttled"


@dataclass(frozen=True)
class AuthResult:
    """What a password source answers: an Identity, or an outcome saying why not."""

    outcome: Outcome
    identity: Identity | None = None
    # Set on success when the password expires soon enough to warn the user.
    password_expires: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when the user is signed in."""
        return self.outcome is Outcome.SUCCESS and self.identity is not None


# Asked by a password source with the login name of the account a username denotes, once
# found and before the password is checked: may this attempt go on? (Sign-in protection
# counts every spelling of an account on the account itself this way.)
Admission = Callable[[str], bool]


@runtime_checkable
class PasswordSource(Protocol):
    """A source that checks a username and password (LDAP/AD, embedded directory)."""

    id: str
    display_name: str

    def authenticate(
        self, username: str, password: str, admit: Admission | None = None
    ) -> AuthResult:
        """Check the credentials; never raise for a wrong password or an unknown user.

        admit, if given, is asked once the account is found and before its password is
        checked; when it answers False the source stops there with Outcome.THROTTLED.
        """

    def check(self) -> None:
        """Raise an exception with a readable message if the source cannot serve sign-ins."""


@runtime_checkable
class RefreshableSource(Protocol):
    """A source that can re-read a signed-in user (groups, account state) without a password."""

    id: str

    def refresh(self, identity: Identity) -> Identity | None:
        """The user's current Identity, or None if they may no longer sign in."""


@runtime_checkable
class PasswordChangeSource(Protocol):
    """A source whose users can change their own password (expired, must change, or soon)."""

    id: str

    def change_password(
        self, username: str, old_password: str, new_password: str,
        admit: Admission | None = None,
    ) -> str | None:
        """Change the password; None on success, else a sentence saying why it was refused.

        admit as for PasswordSource.authenticate (refused with TOO_MANY_ATTEMPTS).
        """


class SourceUnavailable(Exception):
    """A source cannot be reached right now (directory down, store locked)."""


def credentials_acceptable(username: str, password: str) -> bool:
    """Refuse, before any source sees them, inputs no real account can have.

    Empty, whitespace-only or NUL-containing passwords are refused because Active Directory
    treats an empty password as an anonymous bind that "succeeds" (checklist L01).
    """
    if not username or not username.strip() or len(username) > MAX_USERNAME_LENGTH:
        return False
    if "\x00" in username or any(ord(c) < 0x20 for c in username):
        return False
    if not password or not password.strip() or len(password) > MAX_PASSWORD_LENGTH:
        return False
    return "\x00" not in password
