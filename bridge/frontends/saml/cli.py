"""`bridge rp add-saml` and `bridge rp refresh-saml`: SAML service providers from metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError


def _registry(config_file: Path | None) -> tuple[Any, Any]:
    # Imported late: bridge.cli imports this module at its end.
    from bridge.cli import _load, _registry

    config = _load(config_file)
    return config, _registry(config)


@click.command("add-saml")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--metadata", "source", required=True, help="SP metadata: a file or an http(s) URL.")
@click.option("--id", "party_id", default=None, help="Relying-party id (default: from entityID).")
@click.option("--name", default=None, help="Display name (default: the entityID).")
@click.option(
    "--replace", is_flag=True, help="Replace a stored relying party with the same id."
)
def add_saml(
    config_file: Path | None, source: str, party_id: str | None, name: str | None, replace: bool
) -> None:
    """Register a SAML service provider from its metadata and print what was registered."""
    from bridge.frontends.saml.metadata import MetadataError
    from bridge.frontends.saml.registration import party_from_metadata
    from bridge.relying_parties import SamlRelyingParty
    from bridge.store import VersionConflict

    _config, registry = _registry(config_file)
    try:
        party = party_from_metadata(source, party_id, name)
    except MetadataError as exc:
        raise click.ClickException(f"metadata: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise click.ClickException(f"metadata gives an invalid relying party: {problems}") from None
    for other in registry.all():
        if (
            isinstance(other, SamlRelyingParty)
            and other.entity_id == party.entity_id
            and other.id != party.id
        ):
            raise click.ClickException(f"{party.entity_id} is already registered as {other.id}")
    existing = registry.store.get_document("relying-party", party.id)
    if existing is not None and not replace:
        raise click.ClickException(f"{party.id} exists; pass --replace to overwrite it")
    try:
        registry.save(party, existing.version if existing else 0)
    except VersionConflict as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Registered SAML service provider {party.id}:")
    dumped = party.model_dump(mode="json", exclude_none=True)
    order = ("id", "name", "entity_id", "acs", "slo", "want_authn_requests_signed",
             "sign_assertion", "sign_response", "name_id_formats", "metadata_url")
    shown = {key: dumped[key] for key in order if key in dumped}
    shown["signing_certificates"] = len(party.signing_certificates)
    shown["encryption_certificates"] = len(party.encryption_certificates)
    click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())


@click.command("refresh-saml")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("party_id", required=False)
def refresh_saml(config_file: Path | None, party_id: str | None) -> None:
    """Re-read metadata of SAML SPs registered from a URL (one, or every one that is due)."""
    from bridge.frontends.saml.metadata import MetadataError
    from bridge.frontends.saml.registration import refresh_due, refresh_party
    from bridge.relying_parties import SamlRelyingParty

    config, registry = _registry(config_file)
    if party_id is None:
        minutes = config.saml.metadata_refresh_minutes
        for refreshed in refresh_due(registry, registry.store, minutes):
            click.echo(f"Refreshed {refreshed}")
        return
    party = registry.get(party_id)
    if not isinstance(party, SamlRelyingParty) or party.metadata_url is None:
        raise click.ClickException(f"{party_id} is not a SAML SP registered from a metadata URL")
    try:
        changed = refresh_party(registry, party)
    except MetadataError as exc:
        raise click.ClickException(f"metadata: {exc}") from None
    click.echo(f"Refreshed {party_id}" if changed else f"{party_id} is up to date")

