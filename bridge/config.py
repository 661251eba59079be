"""The bridge's configuration: YAML validated by a pydantic schema.

Unknown keys are rejected, every problem is reported at once with its path, and secrets can only
be given through the `!env NAME` and `!envfile PATH` tags, never as plain text in the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from bridge.frontends.oidc.settings import OidcSettings
from bridge.frontends.saml.model import SamlIdpConfig
from bridge.schema import (
    MissingSecret,
    Secret,
    Strict,
    TaggedSecret,
    require_tagged_secret,
    resolve_path,
)
from bridge.sources.ldap_config import LdapSourceConfig

DEFAULT_CONFIG_PATH = Path("config/bridge.yaml")
CONFIG_ENV = "BRIDGE_CONFIG"


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists every `path: message`."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _make_loader(problems: list[str], base_dir: Path) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
            # YAML lets a repeated key silently win; in a config that hides mistakes.
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    problems.append(
                        f"line {key_node.start_mark.line + 1}: key {key!r} appears twice"
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    def env_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        name = loader.construct_scalar(node)
        where = f"line {node.start_mark.line + 1}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
            problems.append(f"{where}: !env needs a variable name, got {name!r}")
            return MissingSecret(f"!env {name}")
        value = os.environ.get(name)
        if value is None:
            problems.append(f"{where}: environment variable {name} (for !env) is not set")
            return MissingSecret(f"!env {name}")
        return TaggedSecret(value, f"!env {name}")

    def envfile_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        raw = loader.construct_scalar(node)
        where = f"line {node.start_mark.line + 1}"
        path = Path(raw)
        if not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(f"{where}: cannot read !envfile {raw}: {exc.strerror}")
            return MissingSecret(f"!envfile {raw}")
        return TaggedSecret(value, f"!envfile {raw}")

    Loader.add_constructor("!env", env_tag)
    Loader.add_constructor("!envfile", envfile_tag)
    return Loader


class ServerConfig(Strict):
    """Where and how the HTTP service listens."""

    public_url: str = "http://localhost:8080"
    bind: str = "127.0.0.1:8080"
    # The HTTP server: gunicorn (pure Python workers) or granian (Rust HTTP, WSGI workers).
    engine: Literal["gunicorn", "granian"] = "gunicorn"
    workers: int | None = Field(default=None, ge=1, le=64)
    threads: int = Field(default=4, ge=1, le=64)
    timeout_seconds: int = Field(default=30, ge=1, le=600)
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)
    max_request_bytes: int = Field(default=1024 * 1024, ge=16 * 1024, le=64 * 1024 * 1024)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8080")
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @property
    def secure_cookies(self) -> bool:
        """Cookies carry Secure unless the public URL is plain http on a non-loopback host."""
        return self.public_url.startswith("https://") or _is_loopback_url(self.public_url)


def _is_loopback_url(url: str) -> bool:
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in {"localhost", "127.0.0.1", "[::1]"}


class SQLiteStoreConfig(Strict):
    """The embedded default store: one SQLite file in WAL mode."""

    type: Literal["sqlite"] = "sqlite"
    path: Path = Field(default=Path("../data/bridge.db"), validate_default=True)
    busy_timeout_ms: int = Field(default=5000, ge=50, le=60000)

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


StoreConfig = Annotated[SQLiteStoreConfig, Field(discriminator="type")]


class KeysConfig(Strict):
    """Where signing keys live and how long retired ones stay published."""

    dir: Path = Field(default=Path("../certs"), validate_default=True)
    retired_publish_hours: int = Field(default=24, ge=0, le=24 * 90)

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


class SessionConfig(Strict):
    """The SSO session kept server-side, and the sign-in requests waiting for a user."""

    cookie_name: str = Field(default="bridge_session", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    idle_minutes: int = Field(default=60, ge=1, le=24 * 60)
    absolute_hours: int = Field(default=8, ge=1, le=24 * 30)
    login_request_minutes: int = Field(default=15, ge=1, le=120)
    # Re-read a signed-in user from their source (groups, disabled/locked) at most this often
    # while the session is used; 0 never re-reads.
    revalidate_minutes: int = Field(default=15, ge=0, le=24 * 60)

    @model_validator(mode="after")
    def _idle_within_absolute(self) -> SessionConfig:
        if self.idle_minutes > self.absolute_hours * 60:
            raise ValueError("idle_minutes cannot exceed absolute_hours")
        return self


class EmbeddedSourceConfig(Strict):
    """Users and groups kept in the bridge's own store (quick start, break-glass)."""

    type: Literal["embedded"]
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,31}$")
    display_name: str = "Local accounts"


SourceConfig = Annotated[
    EmbeddedSourceConfig | LdapSourceConfig, Field(discriminator="type")
]


class TestAppConfig(Strict):
    """The built-in page that shows who signed in; on in the quick start, off elsewhere."""

    __test__ = False  # not a pytest class despite its name
    enabled: bool = False


class LoggingConfig(Strict):
    """Log level and format (JSON lines by default, for log shippers)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class AuditConfig(Strict):
    """How long the stored audit trail is kept."""

    retention_days: int = Field(default=180, ge=1, le=3650)


class SignInProtectionConfig(Strict):
    """Smart lockout and password-spraying throttles, applied before any password is checked.

    Failed attempts are counted per username (familiar and unfamiliar client addresses apart)
    and per client address, in fixed windows. Keep user_failures + familiar_user_failures below
    the directory's own lockout threshold, so that no attacker can lock a real account.
    """

    enabled: bool = True
    # Failures of one username from addresses it has not signed in from (per window).
    user_failures: int = Field(default=5, ge=1, le=1000)
    # Failures of one username from addresses it signed in from before (per window).
    familiar_user_failures: int = Field(default=5, ge=1, le=1000)
    # Failures from one client address, whatever the usernames (per window).
    address_failures: int = Field(default=30, ge=1, le=100_000)
    window_minutes: int = Field(default=15, ge=1, le=1440)
    # How long a successful sign-in makes an address familiar for that user.
    familiar_days: int = Field(default=30, ge=1, le=365)


class BridgeConfig(Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = SQLiteStoreConfig()
    keys: KeysConfig = KeysConfig()
    session: SessionConfig = SessionConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    test_app: TestAppConfig = TestAppConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    sign_in_protection: SignInProtectionConfig = SignInProtectionConfig()
    saml: SamlIdpConfig = SamlIdpConfig()
    oidc: OidcSettings = OidcSettings()
    secret_key: Secret | None = None
    relying_parties_dir: Path = Field(default=Path("relying_parties"), validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _default_sections(cls, data: Any) -> Any:
        # Omitted sections are validated too, so their default paths resolve against the file.
        if isinstance(data, dict):
            return {"store": {"type": "sqlite"}, "keys": {}, **data}
        return data

    @field_validator("secret_key", mode="before")
    @classmethod
    def _secret_key(cls, value: Any) -> Any:
        value = require_tagged_secret(value)
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters of random data")
        return value

    @field_validator("relying_parties_dir")
    @classmethod
    def _rp_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        # Report each repeat at its own path (sources[1].id), not at the whole list.
        seen: set[str] = set()
        errors: list[InitErrorDetails] = []
        for index, source in enumerate(value):
            if source.id in seen:
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "duplicate_id", "source id '{id}' is used twice", {"id": source.id}
                        ),
                        loc=(index, "id"),
                        input=source.id,
                    )
                )
            seen.add(source.id)
        if errors:
            raise ValidationError.from_exception_data("sources", errors)
        return value

    def source(self, source_id: str) -> SourceConfig:
        """Return the source with this id."""
        for source in self.sources:
            if source.id == source_id:
                return source
        raise KeyError(source_id)


def format_location(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as a dotted path with list indexes."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_problems(
    error: ValidationError, tags: frozenset[str] = frozenset({"embedded", "sqlite", "ldap"})
) -> list[str]:
    """Turn a pydantic ValidationError into `path: message` lines, one per problem."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        # Discriminated unions put the chosen tag in the location; it is noise to a reader.
        loc = tuple(p for p in item["loc"] if p not in tags)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{format_location(loc)}: {message}")
    return problems


def load_yaml(path: Path, problems: list[str]) -> Any:
    """Parse a YAML file with the secret tags, appending parse problems instead of raising."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"cannot read {path}: {exc.strerror}")
        return None
    loader = _make_loader(problems, path.parent)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problems.append(f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}")
        return None


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file to use: an explicit path, else $BRIDGE_CONFIG, else config/bridge.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> BridgeConfig:
    """Load and validate the config file, raising ConfigError with every problem at once."""
    file = config_path(path).resolve()
    problems: list[str] = []
    data = load_yaml(file, problems)
    if data is None and not problems:
        problems.append("the file is empty")
    if data is not None and not isinstance(data, dict):
        problems.append("(top level): must be a mapping of sections")
    config = None
    if isinstance(data, dict):
        try:
            config = BridgeConfig.model_validate(data, context={"base_dir": file.parent})
        except ValidationError as exc:
            problems.extend(validation_problems(exc))
    if problems or config is None:
        raise ConfigError(str(file), problems)
    return config


def config_from_dict(data: dict[str, Any], base_dir: Path) -> BridgeConfig:
    """Validate an in-memory config (tests, generated quick-start config)."""
    try:
        return BridgeConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError("<dict>", validation_problems(exc)) from None
