"""The one place that joins frontends, sources and sessions.

A frontend turns a relying party's request into a `LoginRequest` and calls `LoginFlow.start`.
The flow reuses the SSO session if the request allows it, otherwise sends the browser to
/login; after a successful sign-in it hands the request and the session back to the frontend
that registered for the request's protocol, which answers the relying party.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from flask import Response, redirect, url_for

from bridge.audit import AuditTrail
from bridge.identity import Authentication
from bridge.observability import Metrics
from bridge.sessions import SessionManager, SsoSession
from bridge.sign_in_protection import ALLOWED, Attempt, SignInProtection, Verdict
from bridge.sources import (
    Admission,
    AuthResult,
    Outcome,
    PasswordSource,
    RefreshableSource,
    SourceUnavailable,
)
from bridge.store import Store

log = logging.getLogger("bridge.login")
LOGIN_REQUEST_KIND = "login-request"
# Outcomes that count as a guess: a wrong password, or a name no source knows (counted alike,
# so that throttling reveals nothing about which accounts exist).
COUNTED_FAILURES = frozenset({Outcome.INVALID_CREDENTIALS, Outcome.UNKNOWN_USER})


@dataclass(frozen=True)
class LoginRequest:
    """A relying party's request for a signed-in user, kept server-side under an opaque id."""

    protocol: str
    relying_party: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    force_authn: bool = False
    passive: bool = False
    max_age: int | None = None
    sources: tuple[str, ...] = ()
    login_hint: str | None = None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    created: float = field(default_factory=time.time)

    def to_record(self) -> dict[str, Any]:
        """Serialise for the store."""
        record = dataclasses.asdict(self)
        record["params"] = dict(self.params)
        record["sources"] = list(self.sources)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LoginRequest:
        """Rebuild from the store."""
        return cls(**{**record, "sources": tuple(record.get("sources", ()))})


class LoginError(Exception):
    """Why a request cannot be satisfied; the frontend maps it to its protocol's error."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


class Frontend(Protocol):
    """A protocol frontend: answers the relying party once the flow has a signed-in session."""

    protocol: str

    def complete(self, login_request: LoginRequest, session: SsoSession) -> Response:
        """Build the protocol response for a signed-in session."""

    def fail(self, login_request: LoginRequest, error: LoginError) -> Response:
        """Tell the relying party the request cannot be satisfied (e.g. passive, no session)."""


@runtime_checkable
class LogoutPropagation(Protocol):
    """A frontend that must tell its relying parties when an SSO session ends (SAML SLO)."""

    protocol: str

    def propagate_logout(self, session: SsoSession, done_url: str) -> Response | None:
        """Start telling this protocol's participants; the chain ends by redirecting to done_url.

        Return None when none of the session's participants speak this protocol.
        """


@dataclass(frozen=True)
class Client:
    """Who is on the other end of a browser request (for audit and, later, throttling)."""

    ip: str | None
    user_agent: str | None
    request_id: str | None


@dataclass(frozen=True)
class SignInResult:
    """What a sign-in attempt produced: a session, or the outcome that the page explains."""

    outcome: Outcome
    session: SsoSession | None = None
    source: str | None = None
    # When the password expires, if soon enough that the user should be warned.
    password_expires: datetime | None = None


# Outcomes that prove the password was right; only these may be told apart to the user.
# LOCKED is not among them: a locked account answers the same whatever the password.
PASSWORD_PROVEN = frozenset({
    Outcome.SUCCESS,
    Outcome.DISABLED,
    Outcome.ACCOUNT_EXPIRED,
    Outcome.PASSWORD_EXPIRED,
    Outcome.MUST_CHANGE_PASSWORD,
    Outcome.LOGON_HOURS,
    Outcome.WORKSTATION_RESTRICTED,
})
# Outcomes after which the user may set a new password and then continue.
PASSWORD_CHANGE_NEEDED = frozenset({Outcome.PASSWORD_EXPIRED, Outcome.MUST_CHANGE_PASSWORD})


class AttemptAdmission:
    """A source's admit() hook for one attempt: sign-in protection's say, once the account is
    known, before its password is checked (the attempt may move to the account's counter)."""

    def __init__(self, protection: SignInProtection | None, attempt: Attempt):
        self.protection = protection
        self.attempt = attempt

    def __call__(self, account: str) -> bool:
        """May the attempt go on, now that the account it names is known?"""
        if self.protection is None:
            return True
        self.attempt = self.protection.admit(self.attempt, account)
        return self.attempt.verdict is Verdict.ALLOWED


class LoginFlow:
    """Joins frontends, sources and sessions; the only module that knows all three."""

    def __init__(
        self,
        store: Store,
        sessions: SessionManager,
        sources: Sequence[PasswordSource],
        audit: AuditTrail,
        metrics: Metrics,
        request_ttl: int,
        revalidate_seconds: int = 0,
        protection: SignInProtection | None = None,
    ):
        self.store = store
        self.sessions = sessions
        self.sources = list(sources)
        self.protection = protection
        self.audit = audit
        self.metrics = metrics
        self.request_ttl = request_ttl
        self.revalidate_seconds = revalidate_seconds
        self.frontends: dict[str, Frontend] = {}

    def register(self, frontend: Frontend) -> None:
        """Register the frontend that completes requests of its protocol."""
        self.frontends[frontend.protocol] = frontend

    def start(self, login_request: LoginRequest, session: SsoSession | None) -> Response:
        """Answer at once from the SSO session if allowed, else send the browser to sign in."""
        frontend = self.frontends[login_request.protocol]
        if session is not None and self.session_satisfies(login_request, session):
            return frontend.complete(login_request, session)
        if login_request.passive:
            return frontend.fail(login_request, LoginError("no_session", "no usable session"))
        self.store.put(
            LOGIN_REQUEST_KIND, login_request.id, login_request.to_record(), self.request_ttl
        )
        return redirect(url_for("auth.login", request=login_request.id))

    def session_satisfies(self, login_request: LoginRequest, session: SsoSession) -> bool:
        """True if an existing session may answer this request without a new sign-in."""
        if login_request.force_authn:
            return False
        if login_request.max_age is not None:
            if time.time() - session.auth_time > login_request.max_age:
                return False
        if login_request.sources and session.identity.source not in login_request.sources:
            return False
        return True

    def revalidate(self, session: SsoSession | None) -> SsoSession | None:
        """Re-read the session's user from their source when due; None if they are now refused.

        A disabled, locked or deleted directory account ends its SSO sessions within
        revalidate_seconds of their next use. A source that is down keeps the session as is:
        availability wins over freshness for a user who has already signed in.
        """
        if session is None or self.revalidate_seconds <= 0:
            return session
        if self.sessions.clock() - session.validated < self.revalidate_seconds:
            return session
        identity = session.identity
        source = next((s for s in self.sources if s.id == identity.source), None)
        if not isinstance(source, RefreshableSource):
            return session
        try:
            fresh = source.refresh(identity)
        except SourceUnavailable:
            log.warning("session re-validation skipped: source unavailable",
                        extra={"source": identity.source})
            return session
        if fresh is None:
            self.sessions.destroy(session.id)
            self.audit.record(
                "session-revalidation", "revoked", username=identity.username,
                subject=identity.subject, source=identity.source,
            )
            return None
        if identity.authentication is not None:
            fresh = fresh.with_authentication(identity.authentication)
        return self.sessions.replace_identity(session, fresh)

    def pending(self, request_id: str | None) -> LoginRequest | None:
        """The waiting request behind a /login link, if it is still live."""
        if not request_id or len(request_id) > 64:
            return None
        record = self.store.get(LOGIN_REQUEST_KIND, request_id)
        return LoginRequest.from_record(record) if record else None

    def sign_in(
        self,
        username: str,
        password: str,
        client: Client,
        login_request: LoginRequest | None,
        previous_session_id: str | None,
    ) -> SignInResult:
        """Check credentials against the allowed sources and open a session on success."""
        attempt = self.check_attempt(username, client)
        if attempt.verdict is not Verdict.ALLOWED:
            result, source = AuthResult(Outcome.THROTTLED), None
        else:
            admission = self.admission(attempt)
            result, source = self._authenticate(username, password, login_request, admission)
            attempt = admission.attempt
            if result.outcome is not Outcome.THROTTLED:
                self.count_attempt(attempt, result.outcome)
        outcome = result.outcome
        self.metrics.sign_ins.labels(outcome=outcome.value, source=source or "none").inc()
        session = None
        if result.ok and result.identity is not None and source is not None:
            identity = result.identity.with_authentication(Authentication(source=source))
            session = self.sessions.create(identity, previous_id=previous_session_id)
            log.info("sign-in succeeded", extra={"source": source})
        else:
            log.info("sign-in failed", extra={"source": source, "outcome": outcome.value})
        self.audit.record(
            "sign-in",
            outcome.value,
            username=username,
            subject=result.identity.subject if result.identity else None,
            source=source,
            client_ip=client.ip,
            user_agent=client.user_agent,
            request_id=client.request_id,
            relying_party=login_request.relying_party if login_request else None,
            **({"throttle": attempt.verdict.value} if outcome is Outcome.THROTTLED else {}),
        )
        return SignInResult(outcome, session, source, result.password_expires if session else None)

    def check_attempt(self, username: str, client: Client) -> Attempt:
        """Ask sign-in protection whether this attempt may check a password now."""
        return self.protection.check(username, client.ip) if self.protection else ALLOWED

    def admission(self, attempt: Attempt) -> AttemptAdmission:
        """The admit() hook a password source asks once it has found the attempt's account."""
        return AttemptAdmission(self.protection, attempt)

    def count_attempt(self, attempt: Attempt, outcome: Outcome) -> None:
        """Feed sign-in protection: a wrong password or unknown name counts, success clears."""
        if self.protection is None:
            return
        if outcome in COUNTED_FAILURES:
            self.protection.failed(attempt)
        elif outcome in PASSWORD_PROVEN:
            self.protection.succeeded(attempt)
        else:  # unavailable, refused input, locked: no guess was judged
            self.protection.released(attempt)

    def _authenticate(
        self, username: str, password: str, login_request: LoginRequest | None,
        admit: Admission | None = None,
    ) -> tuple[AuthResult, str | None]:
        allowed = login_request.sources if login_request else ()
        candidates = [s for s in self.sources if not allowed or s.id in allowed]
        last = AuthResult(Outcome.UNKNOWN_USER)
        tried = None
        for source in candidates:
            try:
                result = source.authenticate(username, password, admit)
            except SourceUnavailable:
                return AuthResult(Outcome.SOURCE_UNAVAILABLE), source.id
            if result.outcome is Outcome.REJECTED_INPUT:
                return result, None
            tried, last = source.id, result
            # The first source that knows the user decides; others never see the password.
            if result.outcome is not Outcome.UNKNOWN_USER:
                break
        return last, tried

    def end_session(self, session: SsoSession, done_url: str) -> Response | None:
        """End an SSO session; a frontend may first take the browser round its participants."""
        self.sessions.destroy(session.id)
        for frontend in self.frontends.values():
            if isinstance(frontend, LogoutPropagation):
                response = frontend.propagate_logout(session, done_url)
                if response is not None:
                    return response
        return None

    def finish(self, request_id: str | None, session: SsoSession) -> Response | None:
        """Hand a waiting request to its frontend; None if there is none (plain /login)."""
        if not request_id or len(request_id) > 64:
            return None
        record = self.store.take(LOGIN_REQUEST_KIND, request_id)
        if record is None:
            return None
        login_request = LoginRequest.from_record(record)
        frontend = self.frontends.get(login_request.protocol)
        if frontend is None:
            return None
        return frontend.complete(login_request, session)
