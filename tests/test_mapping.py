"""Release rules: ordered, pure, and refusing what they must."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from bridge.identity import Identity
from bridge.mapping import (
    BASIC_FORMAT,
    URI_FORMAT,
    AccessDenied,
    Rule,
    SubjectRule,
    release,
)

ALICE = Identity(
    subject="0b4b0a8e-1",
    username="alice",
    source="ad",
    upn="alice@corp.example.test",
    email="alice@example.test",
    display_name="Alice Example",
    groups=("Domain Users", "Finance", "VPN Users"),
    group_dns=("CN=Finance,OU=Groups,DC=corp,DC=example,DC=test",),
    immutable_id="1wfM9xV8fUSHbcAbDlqeOA==",
    attributes={"department": ("Finance",), "proxyAddresses": ("smtp:a@x", "SMTP:alice@x")},
)
RULES = TypeAdapter(list[Rule])


def rules(*items: dict) -> list:
    return RULES.validate_python(list(items))


def test_rules_release_in_order_with_protocol_metadata() -> None:
    result = release(
        ALICE,
        rules(
            {"type": "attribute", "name": "email", "from": "email", "scopes": ["email"]},
            {"type": "attribute", "name": "http://schemas.xmlsoap.org/claims/UPN", "from": "upn",
             "friendly_name": "UPN"},
            {"type": "attribute", "name": "department", "from": "attributes.department"},
            {"type": "attribute", "name": "addresses", "from": "attributes.proxyAddresses"},
            {"type": "constant", "name": "tenant", "values": ["contoso"]},
            {"type": "groups", "name": "groups", "include": "^(Finance|VPN)"},
        ),
    )
    assert result.subject == "0b4b0a8e-1"
    assert [a.name for a in result.attributes] == [
        "email", "http://schemas.xmlsoap.org/claims/UPN", "department", "addresses", "tenant",
        "groups",
    ]
    upn = result.attributes[1]
    assert upn.name_format == URI_FORMAT and upn.friendly_name == "UPN"
    assert result.attributes[0].name_format == BASIC_FORMAT
    assert result.attributes[3].values == ("smtp:a@x", "SMTP:alice@x")
    assert result.attributes[5].values == ("Finance", "VPN Users")
    claims = result.claims(scopes=["openid"])
    assert "email" not in claims  # gated by the email scope
    assert claims["department"] == "Finance" and claims["groups"] == ["Finance", "VPN Users"]
    assert result.claims(scopes=["openid", "email"])["email"] == "alice@example.test"


def test_subject_source_is_configurable() -> None:
    assert release(ALICE, [], SubjectRule(source="immutable_id")).subject == ALICE.immutable_id
    assert release(ALICE, [], SubjectRule(source="upn")).subject == "alice@corp.example.test"


def test_missing_subject_denies() -> None:
    with pytest.raises(AccessDenied):
        release(Identity(subject="x", username="u", source="s"), [], SubjectRule(source="email"))


def test_require_group_denies_non_members_and_admits_members() -> None:
    assert release(ALICE, rules({"type": "require_group", "any_of": ["Finance", "HR"]}))
    with pytest.raises(AccessDenied):
        release(ALICE, rules({"type": "require_group", "any_of": ["HR"]}))


def test_required_attribute_missing_denies_optional_one_is_noted() -> None:
    bare = Identity(subject="x", username="u", source="s")
    result = release(bare, rules({"type": "attribute", "name": "mail", "from": "email"}))
    assert result.attributes == () and "mail" in result.notes[0]
    with pytest.raises(AccessDenied):
        release(bare, rules({"type": "attribute", "name": "mail", "from": "email",
                             "required": True}))


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "attribute", "name": "x", "from": "password"},
        {"type": "attribute", "name": "x", "from": "attributes."},
        {"type": "groups", "include": "("},
        {"type": "require_group", "any_of": []},
        {"type": "script", "code": "1"},
        {"type": "constant", "name": "x", "values": ["a"], "extra": 1},
    ],
)
def test_invalid_rules_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        rules(bad)
