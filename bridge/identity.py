"""The canonical Identity every source returns and every frontend releases from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PASSWORD_PROTECTED_TRANSPORT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"


@dataclass(frozen=True)
class Authentication:
    """How and when a user proved who they are."""

    source: str
    method: str = "pwd"
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    context_class: str = PASSWORD_PROTECTED_TRANSPORT
    amr: tuple[str, ...] = ("pwd",)


@dataclass(frozen=True)
class Identity:
    """One user as the bridge knows them, whatever source they came from."""

    subject: str
    username: str
    source: str
    upn: str | None = None
    email: str | None = None
    display_name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    groups: tuple[str, ...] = ()
    group_dns: tuple[str, ...] = ()
    immutable_id: str | None = None
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    authentication: Authentication | None = None

    def with_authentication(self, authentication: Authentication) -> Identity:
        """Return a copy stamped with how this sign-in happened."""
        return dataclasses.replace(self, authentication=authentication)

    def to_record(self) -> dict[str, Any]:
        """Serialise to a JSON-safe dict for the store."""
        # Field by field rather than dataclasses.asdict, which deep-copies every value: this
        # runs at each sign-in and session save.
        record: dict[str, Any] = {name: getattr(self, name) for name in _PLAIN_FIELDS}
        record["groups"] = list(self.groups)
        record["group_dns"] = list(self.group_dns)
        record["attributes"] = {k: list(v) for k, v in self.attributes.items()}
        auth = self.authentication
        record["authentication"] = None if auth is None else {
            "source": auth.source,
            "method": auth.method,
            "time": auth.time.isoformat(),
            "context_class": auth.context_class,
            "amr": list(auth.amr),
        }
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Identity:
        """Rebuild an Identity stored with to_record."""
        data = dict(record)
        data["groups"] = tuple(data.get("groups", ()))
        data["group_dns"] = tuple(data.get("group_dns", ()))
        data["attributes"] = {k: tuple(v) for k, v in data.get("attributes", {}).items()}
        auth = data.get("authentication")
        if auth is not None:
            data["authentication"] = Authentication(
                source=auth["source"],
                method=auth["method"],
                time=datetime.fromisoformat(auth["time"]),
                context_class=auth["context_class"],
                amr=tuple(auth["amr"]),
            )
        return cls(**data)


# Identity fields stored as they are (strings or None); the others are converted in to_record.
_PLAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(Identity)
    if f.name not in ("groups", "group_dns", "attributes", "authentication")
)
