"""The per-app container of the bridge's collaborators (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from bridge.audit import AuditTrail
from bridge.config import BridgeConfig
from bridge.keys import KeyRing
from bridge.login_flow import LoginFlow
from bridge.observability import Metrics
from bridge.relying_parties import RelyingPartyRegistry
from bridge.sessions import SessionManager
from bridge.sources import PasswordSource
from bridge.store import Store
from bridge.web.csrf import CsrfProtection

EXTENSION_KEY = "bridge"


@dataclass
class Services:
    """Everything a request handler may need, built once by create_app."""

    config: BridgeConfig
    store: Store
    keys: KeyRing
    sources: list[PasswordSource]
    sessions: SessionManager
    login_flow: LoginFlow
    audit: AuditTrail
    metrics: Metrics
    relying_parties: RelyingPartyRegistry
    csrf: CsrfProtection


def services() -> Services:
    """The Services of the app handling the current request."""
    return current_app.extensions[EXTENSION_KEY]
