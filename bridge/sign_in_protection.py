"""Smart lockout (checklist L07) and password-spraying throttles (L08).

Checked before a password reaches any source, so that an attacker guessing passwords stops at
the bridge: the directory's bad-password count never reaches its lockout threshold (set
`user_failures` and `familiar_user_failures` so that together they stay below it), and the
real user keeps signing in from an address they used before while unfamiliar addresses are
held back, as AD FS's extranet smart lockout does. Failures of unknown usernames count like any
other, so throttling says nothing about which accounts exist.

The counters live in the store (fixed windows), so every worker and node sees the same ones.
An attempt is counted before the password is checked (and taken back if it was not a wrong
guess), so parallel guesses cannot slip past the limit together, from familiar addresses too.

One account has several spellings: alice, CORP\alice and alice@corp are one name here, but a
mail address whose local part differs is only known to be alice once a source has found her
by it. The source then asks admit() before it checks the password, which moves the attempt to
her account's own counter, and remembers the spelling (for familiar_days) so that later
attempts count there from the start: spelling an account several ways buys no more guesses.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from bridge.config import SignInProtectionConfig
from bridge.store import Store

FAILURES_KIND = "sign-in-failures"
FAMILIAR_KIND = "familiar-address"
SPELLING_KIND = "account-spelling"


class Verdict(enum.StrEnum):
    """Whether an attempt may go on to check the password."""

    ALLOWED = "allowed"
    USER_THROTTLED = "user_throttled"
    ADDRESS_THROTTLED = "address_throttled"


@dataclass(frozen=True)
class Attempt:
    """One sign-in attempt as sign-in protection saw it before the password was checked."""

    verdict: Verdict
    username: str = ""
    address: str | None = None
    familiar: bool = False
    failures: int = 0  # earlier ones of this username, in its class (familiar or not)
    counted: bool = False  # counted by check() as a failure until released() takes it back
    spelling: str = ""  # the username as typed, case-folded (username may be its account)


ALLOWED = Attempt(Verdict.ALLOWED)


def _key(*parts: str) -> str:
    # Usernames and addresses are never stored as they are: a digest keys each counter.
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()


def normalised_username(username: str) -> str:
    """One counter per account name, however it was typed: alice, CORP\\alice, alice@corp.

    The domain part is dropped, so an attacker cannot multiply their attempts by writing one
    account in several forms; a mail address whose local part differs from the account name
    is tied to the account by admit() once a source has found it.
    """
    name = username.strip().casefold()
    name = name.rpartition("\\")[2]
    return name.partition("@")[0] if "@" in name else name


class SignInProtection:
    """Failure counters per username (familiar or not) and per client address."""

    def __init__(self, store: Store, config: SignInProtectionConfig):
        self.store = store
        self.config = config
        self.window = config.window_minutes * 60

    def check(self, username: str, address: str | None) -> Attempt:
        """May this attempt check a password now? The answer feeds failed() or succeeded()."""
        if not self.config.enabled:
            return ALLOWED
        if address is not None:
            seen = self.store.get(FAILURES_KIND, _key("address", address))
            if seen and seen.get("count", 0) >= self.config.address_failures:
                return Attempt(Verdict.ADDRESS_THROTTLED, username, address)
        typed = username.strip().casefold()
        user = normalised_username(typed)
        # A spelling a source has tied to an account before (a mail address whose local part
        # is not the account name) counts as that account. Spellings are whole names: bob's
        # account name must not follow alice's mail address bob@mail.example.
        known = self.store.get(SPELLING_KIND, _key("spelling", typed))
        if known and isinstance(known.get("account"), str):
            user = known["account"]
        return self._counted(user, address, typed)

    def _counted(self, user: str, address: str | None, spelling: str) -> Attempt:
        """Count an attempt on a user's counter now and judge it against that counter."""
        familiar = address is not None and (
            self.store.get(FAMILIAR_KIND, _key(user, address)) is not None
        )
        limit = self.config.familiar_user_failures if familiar else self.config.user_failures
        # Counted now, atomically: of N parallel guesses only those within the limit go on,
        # from a familiar address too (a shared office address is familiar to many people).
        attempts = self.store.count(FAILURES_KIND, _user_key(user, familiar), self.window)
        verdict = Verdict.USER_THROTTLED if attempts > limit else Verdict.ALLOWED
        return Attempt(verdict, user, address, familiar, attempts - 1, True, spelling)

    def admit(self, attempt: Attempt, account: str) -> Attempt:
        """The attempt once a source has found its account, before the password is checked.

        If the username spelled the account another way, the attempt moves to the account's
        own counter (and may be throttled there), and the spelling is remembered.
        """
        if not self.config.enabled or not attempt.counted:
            return attempt
        user = normalised_username(account)
        if user == attempt.username:
            return attempt
        self.store.put(SPELLING_KIND, _key("spelling", attempt.spelling), {"account": user},
                       self.config.familiar_days * 86400)
        self.released(attempt)
        return self._counted(user, attempt.address, attempt.spelling)

    def failed(self, attempt: Attempt) -> None:
        """Count a wrong password (or an unknown username) from the attempt's address."""
        if not self.config.enabled or attempt is ALLOWED:
            return
        # The username's own counter already holds this attempt (check() counted it).
        if attempt.address is not None:
            self.store.count(FAILURES_KIND, _key("address", attempt.address), self.window)

    def succeeded(self, attempt: Attempt) -> None:
        """Remember the address as familiar for the user; clear their familiar counter."""
        if not self.config.enabled or attempt is ALLOWED:
            return
        if attempt.familiar:
            # Typos at a familiar address are forgiven once the user gets it right, as AD
            # resets badPwdCount at a successful sign-in (a delete: the cheapest write).
            self.store.delete(FAILURES_KIND, _user_key(attempt.username, True))
            return
        self.released(attempt)
        if attempt.address is not None:
            self.store.put(FAMILIAR_KIND, _key(attempt.username, attempt.address), {},
                           self.config.familiar_days * 86400)

    def released(self, attempt: Attempt) -> None:
        """Take back an attempt counted in advance that turned out to be no wrong guess."""
        # The right password, a directory that did not answer, input refused before any bind.
        if self.config.enabled and attempt.counted:
            self.store.count(FAILURES_KIND, _user_key(attempt.username, attempt.familiar),
                             self.window, by=-1)


def _user_key(user: str, familiar: bool) -> str:
    return _key("familiar" if familiar else "unfamiliar", user)
