"""Active Directory account state: bind sub-codes, computed flags, FILETIME values.

AD answers a failed simple bind with `invalidCredentials` and a Windows error code in the
diagnostic message (`... AcceptSecurityContext error, data 775, v4563`). Codes 530-533, 701 and
773 are only given when the password was right, so only they may be told apart to the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bridge.sources import Outcome

# Sub-codes of a failed bind (MS-ADTS / winerror.h).
SUBCODE_OUTCOMES: dict[str, Outcome] = {
    "525": Outcome.UNKNOWN_USER,  # no such user
    "52e": Outcome.INVALID_CREDENTIALS,  # wrong password (or unknown user)
    "530": Outcome.LOGON_HOURS,  # not permitted to log on at this time
    "531": Outcome.WORKSTATION_RESTRICTED,  # not permitted from this workstation
    "532": Outcome.PASSWORD_EXPIRED,
    "533": Outcome.DISABLED,
    "701": Outcome.ACCOUNT_EXPIRED,
    "773": Outcome.MUST_CHANGE_PASSWORD,  # pwdLastSet = 0
    "775": Outcome.LOCKED,
}
SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]{3,8})\b")

# userAccountControl / msDS-User-Account-Control-Computed bits.
UF_ACCOUNTDISABLE = 0x0002
UF_LOCKOUT = 0x0010
UF_DONT_EXPIRE_PASSWD = 0x10000
UF_PASSWORD_EXPIRED = 0x800000

FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
FILETIME_NEVER = (0, 0x7FFFFFFFFFFFFFFF)

# The attributes of a user entry that describe its state (read with a base search: the
# constructed ones are only computed for base-scope reads).
STATE_ATTRIBUTES = (
    "userAccountControl",
    "msDS-User-Account-Control-Computed",
    "pwdLastSet",
    "accountExpires",
    "msDS-UserPasswordExpiryTimeComputed",
)


def bind_subcode(message: str | None) -> str | None:
    """The Windows error code in an AD bind failure's diagnostic message, lower-cased."""
    match = SUBCODE.search(message or "")
    return match.group(1).lower() if match else None


def outcome_for_bind_failure(message: str | None) -> Outcome:
    """Map an invalidCredentials answer to an outcome (plain LDAP: a wrong password)."""
    code = bind_subcode(message)
    return SUBCODE_OUTCOMES.get(code or "", Outcome.INVALID_CREDENTIALS)


def from_filetime(value: int) -> datetime | None:
    """A FILETIME (100 ns since 1601) as a datetime; None for 0 and 'never'."""
    if value in FILETIME_NEVER or value < 0:
        return None
    try:
        return FILETIME_EPOCH + timedelta(microseconds=value // 10)
    except OverflowError:
        return None


def to_filetime(moment: datetime) -> int:
    """A datetime as a FILETIME (for tests and seeding)."""
    return int((moment - FILETIME_EPOCH).total_seconds() * 10_000_000)


@dataclass(frozen=True)
class AccountState:
    """What a user entry says about whether its owner may sign in now."""

    disabled: bool = False
    locked: bool = False
    account_expires: datetime | None = None
    password_expired: bool = False
    must_change_password: bool = False
    password_expires: datetime | None = None

    def blocking_outcome(self, now: datetime) -> Outcome | None:
        """The reason this account cannot sign in now, or None (most serious first)."""
        if self.disabled:
            return Outcome.DISABLED
        if self.account_expires is not None and self.account_expires <= now:
            return Outcome.ACCOUNT_EXPIRED
        if self.locked:
            return Outcome.LOCKED
        if self.must_change_password:
            return Outcome.MUST_CHANGE_PASSWORD
        if self.password_expired or (
            self.password_expires is not None and self.password_expires <= now
        ):
            return Outcome.PASSWORD_EXPIRED
        return None


def _int(values: dict[str, list[bytes]], name: str) -> int | None:
    raw = values.get(name) or values.get(name.lower())
    if not raw:
        return None
    try:
        return int(raw[0])
    except ValueError:
        return None


def account_state(values: dict[str, list[bytes]]) -> AccountState:
    """Read the state attributes of a user entry (raw values, as returned by a base search)."""
    uac = _int(values, "userAccountControl") or 0
    computed = _int(values, "msDS-User-Account-Control-Computed") or 0
    pwd_last_set = _int(values, "pwdLastSet")
    account_expires = _int(values, "accountExpires")
    expiry_computed = _int(values, "msDS-UserPasswordExpiryTimeComputed")
    must_change = pwd_last_set == 0
    password_expires = None
    if expiry_computed is not None and not must_change and not uac & UF_DONT_EXPIRE_PASSWD:
        password_expires = from_filetime(expiry_computed)
    return AccountState(
        disabled=bool(uac & UF_ACCOUNTDISABLE),
        locked=bool(computed & UF_LOCKOUT),
        account_expires=from_filetime(account_expires) if account_expires is not None else None,
        password_expired=bool(computed & UF_PASSWORD_EXPIRED) and not must_change,
        must_change_password=must_change,
        password_expires=password_expires,
    )


# AD's answers to a refused unicodePwd change, in plain words. The Windows error code is the
# first eight hex digits of the diagnostic message.
PASSWORD_CHANGE_REFUSALS = {
    "0000052d": (
        "The new password does not meet the password policy: it may be too short, not complex "
        "enough, one you used recently, or your password was changed too recently to change "
        "it again."
    ),
    "00000056": "The current password is incorrect.",
    "00000005": "Your account is not allowed to change its password. Contact your administrator.",
    "0000052e": "The current password is incorrect.",
    "00000775": "This account is locked. Try again later or contact your administrator.",
}
GENERIC_CHANGE_REFUSAL = "The password could not be changed. Contact your administrator."


def explain_password_change_refusal(message: str | None) -> str:
    """Turn AD's diagnostic for a refused password change into a sentence for the user."""
    text = (message or "").strip().lower()
    match = re.match(r"([0-9a-f]{8})", text)
    if match and match.group(1) in PASSWORD_CHANGE_REFUSALS:
        return PASSWORD_CHANGE_REFUSALS[match.group(1)]
    code = bind_subcode(text)
    if code == "52e":
        return PASSWORD_CHANGE_REFUSALS["00000056"]
    if code == "775":
        return PASSWORD_CHANGE_REFUSALS["00000775"]
    return GENERIC_CHANGE_REFUSAL
