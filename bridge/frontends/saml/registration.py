"""Registering service providers from their metadata, and refreshing it on a schedule.

The schedule lives in the store: a refresh of one SP is claimed with `store.add` on a record
that lives for the refresh interval, so among any number of nodes exactly one re-reads an SP's
metadata per interval, and the result is saved with optimistic concurrency.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import requests as http

from bridge.frontends.saml.metadata import MetadataError, parse_sp_metadata
from bridge.relying_parties import RelyingPartyRegistry, SamlRelyingParty
from bridge.store import Store, StoreError, VersionConflict

log = logging.getLogger("bridge.saml.metadata")

REFRESH_KIND = "saml-metadata-refresh"
MAX_METADATA_BYTES = 1024 * 1024
FETCH_TIMEOUT_SECONDS = 10
CHECK_INTERVAL_SECONDS = 60


def read_metadata(source: str) -> bytes:
    """Metadata bytes from an http(s) URL (bounded size and time) or a local file."""
    if re.match(r"^https?://", source):
        try:
            with http.get(source, timeout=FETCH_TIMEOUT_SECONDS, stream=True) as response:
                response.raise_for_status()
                data = b""
                for chunk in response.iter_content(65536):
                    data += chunk
                    if len(data) > MAX_METADATA_BYTES:
                        raise MetadataError("the metadata is larger than 1 MiB")
                return data
        except http.RequestException as exc:
            raise MetadataError(f"cannot fetch {source}: {type(exc).__name__}") from None
    path = Path(source)
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise MetadataError("the metadata is larger than 1 MiB")
        return path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"cannot read {source}: {exc.strerror}") from None


def default_id(entity_id: str) -> str:
    """A relying-party id derived from an entityID (host and path, lowercased)."""
    text = re.sub(r"^[a-z]+://", "", entity_id.lower())
    text = re.sub(r"[^a-z0-9_.\-]+", "-", text).strip("-._")
    return (text or "sp")[:64].rstrip("-._") or "sp"


def party_from_metadata(
    source: str, party_id: str | None = None, name: str | None = None, **extra: Any
) -> SamlRelyingParty:
    """A SamlRelyingParty built from metadata (the URL is kept for refreshes)."""
    settings = parse_sp_metadata(read_metadata(source), extra.get("metadata_signing_certificate"))
    body: dict[str, Any] = {
        "protocol": "saml",
        "id": party_id or default_id(settings["entity_id"]),
        "name": name or settings["entity_id"],
        **settings,
        **extra,
    }
    if re.match(r"^https?://", source):
        body["metadata_url"] = source
    return SamlRelyingParty.model_validate(body)


def refresh_party(registry: RelyingPartyRegistry, party: SamlRelyingParty) -> bool:
    """Re-read one SP's metadata URL and save what changed; False if nothing changed."""
    if party.metadata_url is None:
        return False
    settings = parse_sp_metadata(
        read_metadata(party.metadata_url), party.metadata_signing_certificate
    )
    if settings["entity_id"] != party.entity_id:
        raise MetadataError("the metadata now names another entityID; not applied")
    document = registry.store.get_document("relying-party", party.id)
    if document is None:
        return False
    current = party.model_dump(mode="json", by_alias=True)
    updated = SamlRelyingParty.model_validate({**current, **settings})
    if updated == party:
        return False
    registry.save(updated, document.version)
    return True


def refresh_due(registry: RelyingPartyRegistry, store: Store, default_minutes: int) -> list[str]:
    """Refresh every stored SP whose interval has passed and that no other node claimed."""
    refreshed: list[str] = []
    try:
        parties = registry.all()
    except StoreError as exc:
        log.warning("saml metadata refresh skipped", extra={"error": str(exc)[:200]})
        return refreshed
    for party in parties:
        if not isinstance(party, SamlRelyingParty) or party.metadata_url is None:
            continue
        if registry.is_read_only(party.id):
            continue  # config files are edited by hand
        interval = (party.metadata_refresh_minutes or default_minutes) * 60
        try:
            if not store.add(REFRESH_KIND, party.id, {"at": time.time()}, interval):
                continue
            if refresh_party(registry, party):
                refreshed.append(party.id)
                log.info("saml metadata refreshed", extra={"relying_party": party.id})
        except (MetadataError, VersionConflict, StoreError, ValueError) as exc:
            log.warning(
                "saml metadata refresh failed",
                extra={"relying_party": party.id, "error": str(exc)[:200]},
            )
    return refreshed


class RefreshTimer:
    """Runs refresh_due at most once a minute per process, off the request thread."""

    def __init__(self) -> None:
        self._next = 0.0
        self._lock = threading.Lock()

    def poke(self, registry: RelyingPartyRegistry, store: Store, default_minutes: int) -> None:
        """Start a background refresh if the last check was over a minute ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return
            self._next = now + CHECK_INTERVAL_SECONDS
        thread = threading.Thread(
            target=refresh_due, args=(registry, store, default_minutes), daemon=True
        )
        thread.start()
