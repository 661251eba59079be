"""Release rules: a relying party's ordered rules turn an Identity into a Release, or deny.

Pure functions of data, so an admin can preview exactly what a relying party will receive.
*Source -> Identity* mapping belongs to each source's config; this module only does
*Identity -> relying party*.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, field_validator

from bridge.identity import Identity
from bridge.schema import Strict

IDENTITY_FIELDS = (
    "subject",
    "username",
    "source",
    "upn",
    "email",
    "display_name",
    "given_name",
    "family_name",
    "immutable_id",
    "groups",
    "group_dns",
)
FIELD_PATTERN = r"^(subject|username|source|upn|email|display_name|given_name|family_name|" \
    r"immutable_id|groups|group_dns|attributes\.[A-Za-z0-9_\-.;]{1,128})$"
URI_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
BASIC_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"
UNSPECIFIED_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:unspecified"
NAME_FORMATS = {"uri": URI_FORMAT, "basic": BASIC_FORMAT, "unspecified": UNSPECIFIED_FORMAT}


class AccessDenied(Exception):
    """The relying party's rules refuse this user (told to the user, never the details)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ReleasedAttribute:
    """One released claim/attribute with the metadata each protocol needs to encode it."""

    name: str
    values: tuple[str, ...]
    name_format: str = URI_FORMAT
    friendly_name: str | None = None
    scopes: tuple[str, ...] = ()
    multivalued: bool = False


@dataclass(frozen=True)
class Release:
    """What a relying party receives: a subject and attributes, in rule order."""

    subject: str
    attributes: tuple[ReleasedAttribute, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    def claims(self, scopes: Sequence[str] | None = None) -> dict[str, str | list[str]]:
        """OIDC-style claims, keeping only attributes whose scope gate is met."""
        out: dict[str, str | list[str]] = {}
        for attribute in self.attributes:
            if scopes is not None and attribute.scopes and not set(attribute.scopes) & set(scopes):
                continue
            out[attribute.name] = (
                list(attribute.values) if attribute.multivalued else attribute.values[0]
            )
        return out


class SubjectRule(Strict):
    """Which Identity field becomes the subject (NameID, `sub`)."""

    source: Literal["subject", "immutable_id", "upn", "email", "username"] = "subject"


class AttributeRule(Strict):
    """Release an Identity field under a name."""

    type: Literal["attribute"]
    name: str = Field(min_length=1, max_length=256)
    value_from: str = Field(alias="from", pattern=FIELD_PATTERN)
    name_format: Literal["uri", "basic", "unspecified"] | None = None
    friendly_name: str | None = Field(default=None, max_length=128)
    scopes: tuple[str, ...] = ()
    multivalued: bool | None = None
    required: bool = False


class ConstantRule(Strict):
    """Release fixed values (a tenant id, a role for everyone)."""

    type: Literal["constant"]
    name: str = Field(min_length=1, max_length=256)
    values: tuple[str, ...] = Field(min_length=1)
    name_format: Literal["uri", "basic", "unspecified"] | None = None
    friendly_name: str | None = Field(default=None, max_length=128)
    scopes: tuple[str, ...] = ()
    multivalued: bool = False


class GroupsRule(Strict):
    """Release group memberships, optionally filtered by a regular expression."""

    type: Literal["groups"]
    name: str = Field(default="groups", min_length=1, max_length=256)
    use: Literal["names", "dns"] = "names"
    include: str | None = None
    name_format: Literal["uri", "basic", "unspecified"] | None = None
    friendly_name: str | None = Field(default=None, max_length=128)
    scopes: tuple[str, ...] = ()

    @field_validator("include")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RequireGroupRule(Strict):
    """Deny access unless the user is in at least one of the groups."""

    type: Literal["require_group"]
    any_of: tuple[str, ...] = Field(min_length=1)


Rule = Annotated[
    AttributeRule | ConstantRule | GroupsRule | RequireGroupRule, Field(discriminator="type")
]


def identity_values(identity: Identity, path: str) -> tuple[str, ...]:
    """The values of an Identity field named as in release rules (`email`, `attributes.x`)."""
    if path.startswith("attributes."):
        return identity.attributes.get(path.removeprefix("attributes."), ())
    value = getattr(identity, path)
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return (str(value),)


def _format(name: str, chosen: str | None) -> str:
    if chosen:
        return NAME_FORMATS[chosen]
    return URI_FORMAT if re.match(r"^(urn:|https?://)", name) else BASIC_FORMAT


def release(
    identity: Identity, rules: Sequence[Rule], subject: SubjectRule | None = None
) -> Release:
    """Apply the rules in order; raise AccessDenied if a rule refuses the user."""
    subject = subject or SubjectRule()
    subject_values = identity_values(identity, subject.source)
    if not subject_values:
        raise AccessDenied(f"the user has no {subject.source} to use as the subject")
    attributes: list[ReleasedAttribute] = []
    notes: list[str] = []
    for rule in rules:
        if isinstance(rule, RequireGroupRule):
            if not set(rule.any_of) & set(identity.groups):
                raise AccessDenied("not a member of any group this application requires")
            continue
        if isinstance(rule, AttributeRule):
            values = identity_values(identity, rule.value_from)
            if not values:
                if rule.required:
                    raise AccessDenied(f"the user has no {rule.value_from}, which is required")
                notes.append(f"{rule.name}: {rule.value_from} is empty; not released")
                continue
            multivalued = rule.multivalued if rule.multivalued is not None else len(values) > 1
            attributes.append(
                ReleasedAttribute(
                    rule.name, values, _format(rule.name, rule.name_format),
                    rule.friendly_name, rule.scopes, multivalued,
                )
            )
        elif isinstance(rule, ConstantRule):
            attributes.append(
                ReleasedAttribute(
                    rule.name, rule.values, _format(rule.name, rule.name_format),
                    rule.friendly_name, rule.scopes, rule.multivalued or len(rule.values) > 1,
                )
            )
        elif isinstance(rule, GroupsRule):
            values = identity.groups if rule.use == "names" else identity.group_dns
            if rule.include:
                pattern = re.compile(rule.include)
                values = tuple(v for v in values if pattern.search(v))
            attributes.append(
                ReleasedAttribute(
                    rule.name, values, _format(rule.name, rule.name_format),
                    rule.friendly_name, rule.scopes, True,
                )
            )
    return Release(subject_values[0], tuple(attributes), tuple(notes))
