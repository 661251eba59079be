"""Building blocks of every config schema: strict models, tagged secrets, relative paths.

Kept apart from bridge.config so that each source and frontend can define its own settings
model beside its code, and bridge.config can assemble them without import cycles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo


class TaggedSecret(str):
    """A string that came from `!env` or `!envfile`, the only accepted form for secrets."""

    __slots__ = ("origin",)

    def __new__(cls, value: str, origin: str) -> TaggedSecret:
        instance = super().__new__(cls, value)
        instance.origin = origin
        return instance

    def __repr__(self) -> str:
        return f"<secret from {self.origin}>"


class MissingSecret:
    """Placeholder for a tag whose variable or file is missing; reported as a problem."""

    def __init__(self, origin: str):
        self.origin = origin


def require_tagged_secret(value: Any) -> Any:
    """Validator: accept a secret only if it came from !env or !envfile (None passes)."""
    if isinstance(value, MissingSecret):
        raise ValueError(f"secret {value.origin} is unavailable (see the problem above)")
    if value is not None and not isinstance(value, TaggedSecret):
        raise ValueError("secrets must be given with !env NAME or !envfile PATH, not as text")
    return value


Secret = SecretStr


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the directory of the config file being validated."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute():
        return (Path(base) / path).resolve()
    return path


