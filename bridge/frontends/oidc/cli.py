"""`bridge rp add-oidc`: register an OAuth 2.0 / OpenID Connect client in the store."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from bridge.config import validation_problems

DEFAULT_RELEASE: list[dict[str, Any]] = [
    {"type": "attribute", "name": "preferred_username", "from": "username", "scopes": ["profile"]},
    {"type": "attribute", "name": "name", "from": "display_name", "scopes": ["profile"]},
    {"type": "attribute", "name": "given_name", "from": "given_name", "scopes": ["profile"]},
    {"type": "attribute", "name": "family_name", "from": "family_name", "scopes": ["profile"]},
    {"type": "attribute", "name": "email", "from": "email", "scopes": ["email"]},
    {"type": "groups", "name": "groups", "scopes": ["groups"]},
]
GRANTS = {
    "authorization_code": "authorization_code",
    "refresh_token": "refresh_token",
    "client_credentials": "client_credentials",
    "token_exchange": "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:ietf:params:oauth:grant-type:token-exchange": (
        "urn:ietf:params:oauth:grant-type:token-exchange"
    ),
}
PARTY_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")


@click.command("add-oidc")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Config file (default: $BRIDGE_CONFIG or config/bridge.yaml).")
@click.option("--client-id", required=True, help="The client identifier.")
@click.option("--id", "party_id", default=None,
              help="Relying party id (default: the client id, when it is a valid id).")
@click.option("--name", default=None, help="Display name (default: the client id).")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Redirect URI (repeatable).")
@click.option("--post-logout-redirect-uri", "logout_uris", multiple=True,
              help="Where RP-initiated logout may return (repeatable).")
@click.option("--public", is_flag=True, help="A public client (no secret; PKCE S256 required).")
@click.option("--grant", "grant_types", multiple=True, type=click.Choice(sorted(GRANTS)),
              help="Allowed grant (repeatable; default authorization_code and refresh_token).")
@click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable).")
@click.option("--auth-method", type=click.Choice(
    ["client_secret_basic", "client_secret_post", "private_key_jwt"]), default=None,
    help="Token endpoint authentication (default client_secret_basic).")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JWK Set file with the client's public keys (private_key_jwt).")
@click.option("--jwks-uri", default=None, help="URL of the client's JWK Set (private_key_jwt).")
@click.option("--audience", default=None, help="The `aud` of access tokens (default: client id).")
@click.option("--exchange-audience", "exchange_audiences", multiple=True,
              help="Audience this client may exchange tokens for (repeatable).")
@click.option("--id-token-alg", type=click.Choice(["ES256", "RS256"]), default=None,
              help="ID token signature algorithm (default ES256).")
def add_oidc(
    config_file: Path | None,
    client_id: str,
    party_id: str | None,
    name: str | None,
    redirect_uris: tuple[str, ...],
    logout_uris: tuple[str, ...],
    public: bool,
    grant_types: tuple[str, ...],
    scopes: tuple[str, ...],
    auth_method: str | None,
    jwks_file: Path | None,
    jwks_uri: str | None,
    audience: str | None,
    exchange_audiences: tuple[str, ...],
    id_token_alg: str | None,
) -> None:
    """Register an OIDC client; a generated secret is printed once and stored as a digest."""
    from bridge.cli import _load, _registry
    from bridge.frontends.oidc.clients import generate_secret
    from bridge.relying_parties import OidcRelyingParty
    from bridge.store import VersionConflict

    config = _load(config_file)
    party_id = party_id or client_id
    if not PARTY_ID.match(party_id):
        click.echo("error: the client id is not a valid relying party id; pass --id", err=True)
        sys.exit(1)
    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text())
        except (OSError, ValueError) as exc:
            click.echo(f"error: cannot read {jwks_file}: {exc}", err=True)
            sys.exit(1)
        if isinstance(jwks, dict) and any("d" in k for k in jwks.get("keys", []) if
                                          isinstance(k, dict)):
            click.echo("error: the JWK Set contains private key material", err=True)
            sys.exit(1)
    if auth_method is None:
        auth_method = "private_key_jwt" if (jwks or jwks_uri) else "client_secret_basic"
    if public:
        auth_method = "none"
    secret = digest = None
    if auth_method in ("client_secret_basic", "client_secret_post"):
        secret, digest = generate_secret()
    data: dict[str, Any] = {
        "id": party_id,
        "name": name or client_id,
        "protocol": "oidc",
        "client_id": client_id,
        "redirect_uris": list(redirect_uris),
        "post_logout_redirect_uris": list(logout_uris),
        "public": public,
        "auth_method": auth_method,
        "client_secret_sha256": digest,
        "jwks": jwks,
        "jwks_uri": jwks_uri,
        "access_token_audience": audience,
        "token_exchange_audiences": list(exchange_audiences),
        "id_token_signed_response_alg": id_token_alg,
        "release": DEFAULT_RELEASE,
    }
    if grant_types:
        data["grant_types"] = [GRANTS[g] for g in dict.fromkeys(grant_types)]
    if scopes:
        data["scopes"] = list(dict.fromkeys(s for item in scopes for s in item.split()))
    try:
        party = OidcRelyingParty.model_validate(data)
    except ValidationError as exc:
        for problem in validation_problems(exc):
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    try:
        _registry(config).save(party)
    except VersionConflict:
        click.echo(f"error: relying party {party_id!r} already exists", err=True)
        sys.exit(1)
    click.echo(f"Added OIDC client {client_id} (relying party {party_id})")
    if secret:
        click.echo("Client secret (shown once; only its SHA-256 digest is stored):")
        click.echo(secret)
