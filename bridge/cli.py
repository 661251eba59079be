"""The `bridge` command line: serve, check-config, quickstart, keys, users, audit."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import click

from bridge import keys as keyring
from bridge.config import CONFIG_ENV, BridgeConfig, ConfigError, config_path, load_config
from bridge.sources.embedded import DirectoryError, EmbeddedDirectory, generate_password
from bridge.store import Store, StoreError, open_store

EXIT_CONFIG = 2
EXIT_FAILURE = 1

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file (default: ${CONFIG_ENV} or config/bridge.yaml).",
)


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _exit_with_problems(exc: ConfigError) -> NoReturn:
    click.echo(f"{exc.source}: {len(exc.problems)} problem(s):", err=True)
    for problem in exc.problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(EXIT_CONFIG)


def _relying_party_files(config: BridgeConfig) -> list[Any]:
    """The config-file relying parties, or exit 2 listing every problem."""
    from bridge.relying_parties import load_relying_party_files

    try:
        return load_relying_party_files(config.relying_parties_dir)
    except ConfigError as exc:
        _exit_with_problems(exc)


def _load(config_file: Path | None) -> BridgeConfig:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        _exit_with_problems(exc)


def with_config(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the validated config (exit code 2 listing every problem otherwise)."""

    @config_option
    @wraps(func)
    def wrapper(config_file: Path | None, **kwargs: Any) -> Any:
        return func(_load(config_file), **kwargs)

    return wrapper


def _store(config: BridgeConfig) -> Store:
    try:
        return open_store(config.store)
    except StoreError as exc:
        _fail(f"cannot open the store at {config.store.path}: {exc}")


def _directory(config: BridgeConfig, store: Store, source_id: str | None) -> EmbeddedDirectory:
    embedded = [s for s in config.sources if s.type == "embedded"]
    if source_id:
        embedded = [s for s in embedded if s.id == source_id]
    if not embedded:
        suffix = f" with id {source_id}" if source_id else ""
        _fail(f"no embedded directory source is configured{suffix}")
    source = embedded[0]
    return EmbeddedDirectory(store, source.id, source.display_name)


@click.group()
@click.version_option(package_name="bridge-sso")
def main() -> None:
    """Bridge: single sign-on between Active Directory, Microsoft 365 and partner apps."""


@main.command("check-config")
@config_option
def check_config(config_file: Path | None) -> None:
    """Validate the config file (and relying parties); list every problem, exit 2 if any."""
    config = _load(config_file)
    parties = _relying_party_files(config)
    path = config_path(config_file).resolve()
    click.echo(f"{path}: ok ({len(config.sources)} source(s), {len(parties)} relying part(ies))")


def _prepare(config: BridgeConfig) -> None:
    """Fail early and clearly on what would stop every worker: store, keys, relying parties."""
    _relying_party_files(config)
    _store(config).close()  # creates the database and runs migrations once, before forking
    try:
        keyring.KeyRing.load(config.keys.dir)
    except keyring.KeysMissing:
        _fail(f"no signing keys in {config.keys.dir}: run `bridge keys generate`", EXIT_CONFIG)
    except keyring.KeyFileError as exc:
        _fail(str(exc), EXIT_CONFIG)


@main.command()
@with_config
@click.option("--dev", is_flag=True, help="Flask's development server instead of server.engine.")
@click.option("--bind", default=None, help="HOST:PORT to listen on (overrides server.bind).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes.")
def serve(config: BridgeConfig, dev: bool, bind: str | None, workers: int | None) -> None:
    """Run the bridge (server.engine: gunicorn or granian; workers from config or per CPU)."""
    from bridge.serve import run_dev, run_server

    _prepare(config)
    if dev:
        run_dev(config, bind)
    else:
        run_server(config, bind, workers)


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Config file to use or create (default: ${CONFIG_ENV} or config/bridge.yaml).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--bind-host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--serve/--no-serve", default=True, help="Start serving after preparing.")
def quickstart(config_file: Path | None, port: int, bind_host: str, serve: bool) -> None:
    """Prepare the embedded default (config, SQLite, keys, first admin) and start serving."""
    path = config_path(config_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        template = resources.files("bridge").joinpath("defaults/quickstart.yaml").read_text()
        # In the repository layout (config/bridge.yaml) data and certs sit beside config/.
        top = "../" if path.parent.name == "config" else ""
        path.write_text(
            template.format(
                port=port,
                bind=f"{bind_host}:{port}",
                store_path=f"{top}data/bridge.db",
                keys_dir=f"{top}certs",
            )
        )
        click.echo(f"Wrote {path}")
    config = _load(path)
    store = _store(config)
    try:
        keyring.KeyRing.load(config.keys.dir)
    except keyring.KeysMissing:
        keyring.generate(config.keys.dir, development=True)
        click.echo(f"Generated development signing keys in {config.keys.dir}")
    directory = _directory(config, store, None)
    if not directory.list_users():
        password = generate_password()
        directory.add_user("admin", password, display_name="Administrator", groups=["admins"])
        click.echo("")
        click.echo("Created the first administrator (the password is shown only this once):")
        click.echo("  Username: admin")
        click.echo(f"  Password: {password}")
    store.close()
    click.echo("")
    landing = "/app/" if config.test_app.enabled else "/"
    click.echo(f"Bridge is running at {config.server.public_url}{landing}", nl=True)
    sys.stdout.flush()
    if serve:
        from bridge.serve import run_server

        _prepare(config)
        run_server(config)


# Keys


@main.group()
def keys() -> None:
    """Generate, list and rotate signing keys (SAML RSA + certificate; JWT ES256 and RS256)."""


def _print_keys(items: list[keyring.SigningKey]) -> None:
    for key in items:
        flag = " DEVELOPMENT" if key.development else ""
        click.echo(f"{key.use:10} {key.state:8} {key.kid}  created {key.created}{flag}")


@keys.command("generate")
@with_config
@click.option("--force", is_flag=True, help="Retire existing current/next keys and make new ones.")
@click.option("--rsa-bits", type=click.Choice(["2048", "3072", "4096"]), default="3072")
@click.option("--saml-cn", default="Bridge SAML signing", show_default=True)
def keys_generate(config: BridgeConfig, force: bool, rsa_bits: str, saml_cn: str) -> None:
    """Create a current and a next key for each use that has none."""
    created = keyring.generate(
        config.keys.dir, force=force, rsa_bits=int(rsa_bits), saml_common_name=saml_cn
    )
    if not created:
        click.echo("Every use already has a current key (use --force to replace them).")
    _print_keys(created)


@keys.command("list")
@with_config
def keys_list(config: BridgeConfig) -> None:
    """Show every key: use, state, id, age."""
    try:
        ring = keyring.KeyRing.load(config.keys.dir)
    except (keyring.KeysMissing, keyring.KeyFileError) as exc:
        _fail(str(exc))
    _print_keys(ring.all())
    for warning in ring.warnings():
        click.echo(f"WARNING: {warning}", err=True)


@keys.command("rotate")
@with_config
@click.option("--use", "uses", multiple=True, type=click.Choice(keyring.KEY_USES))
def keys_rotate(config: BridgeConfig, uses: tuple[str, ...]) -> None:
    """Promote next keys to current, retire the current ones, and create new next keys."""
    try:
        changed = keyring.rotate(config.keys.dir, uses=uses or keyring.KEY_USES)
    except (keyring.KeysMissing, keyring.KeyFileError) as exc:
        _fail(str(exc))
    _print_keys(changed)


# Relying parties


@main.group()
def rp() -> None:
    """Relying parties: SAML service providers, OIDC clients, WS-Fed realms."""


def _registry(config: BridgeConfig) -> Any:
    from bridge.relying_parties import RelyingPartyRegistry

    return RelyingPartyRegistry(_store(config), _relying_party_files(config))


@rp.command("list")
@with_config
def rp_list(config: BridgeConfig) -> None:
    """List relying parties: id, protocol, state, origin, name."""
    registry = _registry(config)
    for party in registry.all():
        origin = "config" if registry.is_read_only(party.id) else "store"
        state = "enabled" if party.enabled else "disabled"
        click.echo(f"{party.id:24} {party.protocol:6} {state:8} {origin:6} {party.name}")


@rp.command("show")
@with_config
@click.argument("party_id")
def rp_show(config: BridgeConfig, party_id: str) -> None:
    """Show one relying party's settings as YAML."""
    import yaml

    party = _registry(config).get(party_id)
    if party is None:
        _fail(f"no relying party {party_id!r}")
    click.echo(yaml.safe_dump(party.model_dump(mode="json", by_alias=True), sort_keys=False))


@rp.command("remove")
@with_config
@click.argument("party_id")
def rp_remove(config: BridgeConfig, party_id: str) -> None:
    """Remove a relying party kept in the store (config-file ones are edited in their file)."""
    from bridge.store import VersionConflict

    try:
        removed = _registry(config).remove(party_id)
    except VersionConflict as exc:
        _fail(str(exc))
    if not removed:
        _fail(f"no relying party {party_id!r} in the store")
    click.echo(f"Removed {party_id}")


# Users of the embedded directory


@main.group()
def users() -> None:
    """Manage users of the embedded directory."""


source_option = click.option("--source", "source_id", default=None, help="Embedded source id.")


def _read_password(from_stdin: bool) -> tuple[str, bool]:
    """A password from stdin, or a generated one (second value: True if generated)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return generate_password(), True


@users.command("add")
@with_config
@source_option
@click.argument("username")
@click.option("--display-name", default=None)
@click.option("--email", default=None)
@click.option("--group", "groups", multiple=True, help="Group membership (repeatable).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_add(
    config: BridgeConfig,
    source_id: str | None,
    username: str,
    display_name: str | None,
    email: str | None,
    groups: tuple[str, ...],
    password_stdin: bool,
) -> None:
    """Create a user; prints a generated password once unless --password-stdin."""
    store = _store(config)
    password, generated = _read_password(password_stdin)
    try:
        user = _directory(config, store, source_id).add_user(
            username, password, display_name=display_name, email=email, groups=groups
        )
    except DirectoryError as exc:
        _fail(str(exc))
    click.echo(f"Created {user.username} ({user.id})")
    if generated:
        click.echo(f"Password (shown only this once): {password}")


@users.command("passwd")
@with_config
@source_option
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_passwd(
    config: BridgeConfig, source_id: str | None, username: str, password_stdin: bool
) -> None:
    """Set a new password; prints a generated one once unless --password-stdin."""
    store = _store(config)
    password, generated = _read_password(password_stdin)
    try:
        _directory(config, store, source_id).set_password(username, password)
    except DirectoryError as exc:
        _fail(str(exc))
    click.echo(f"Password of {username} changed")
    if generated:
        click.echo(f"New password (shown only this once): {password}")


@users.command("disable")
@with_config
@source_option
@click.argument("username")
def users_disable(config: BridgeConfig, source_id: str | None, username: str) -> None:
    """Disable a user: their password stops working."""
    _set_disabled(config, source_id, username, True)


@users.command("enable")
@with_config
@source_option
@click.argument("username")
def users_enable(config: BridgeConfig, source_id: str | None, username: str) -> None:
    """Re-enable a disabled user."""
    _set_disabled(config, source_id, username, False)


def _set_disabled(config: BridgeConfig, source_id: str | None, username: str, value: bool) -> None:
    try:
        _directory(config, _store(config), source_id).set_disabled(username, value)
    except DirectoryError as exc:
        _fail(str(exc))
    click.echo(f"{username} {'disabled' if value else 'enabled'}")


@users.command("list")
@with_config
@source_option
def users_list(config: BridgeConfig, source_id: str | None) -> None:
    """List users: name, state, groups."""
    for user in _directory(config, _store(config), source_id).list_users():
        state = "disabled" if user.disabled else "active"
        groups = ",".join(user.groups) or "-"
        click.echo(f"{user.username:24} {state:8} {groups:30} {user.display_name or ''}")


# Audit trail

_RELATIVE = re.compile(r"^(\d+)([mhd])$")


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=amount), "h": timedelta(hours=amount)}.get(
            unit, timedelta(days=amount)
        )
        return datetime.now(UTC) - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO time or a duration such as 30m, 12h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@main.command()
@with_config
@click.option("--user", "username", default=None, help="Only this username (as typed).")
@click.option("--outcome", default=None, help="Only this outcome (success, ...).")
@click.option("--event", default=None, help="Only this event (sign-in, sign-out).")
@click.option(
    "--since",
    default=None,
    callback=lambda _ctx, _param, value: _parse_since(value),
    help="ISO time or duration such as 24h, 7d.",
)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    config: BridgeConfig,
    username: str | None,
    outcome: str | None,
    event: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the stored audit trail, newest first."""
    events = _store(config).query_audit(
        since=since, username=username, outcome=outcome, event=event, limit=limit
    )
    for item in events:
        if as_json:
            record = {**item.__dict__, "time": item.time.isoformat()}
            click.echo(json.dumps(record, default=str))
        else:
            click.echo(
                f"{item.time.isoformat(timespec='seconds')} {item.event:9} {item.outcome:20} "
                f"{item.username or '-':24} {item.source or '-':10} {item.client_ip or '-'}"
            )


from bridge.frontends.oidc.cli import add_oidc  # noqa: E402 - registered after the groups exist

rp.add_command(add_oidc)

from bridge.frontends.saml.cli import add_saml, refresh_saml  # noqa: E402 - as above

rp.add_command(add_saml)
rp.add_command(refresh_saml)

from bridge.sources.ldap_cli import ldap  # noqa: E402 - as above

main.add_command(ldap)
