"""SAML settings: the IdP section of bridge.yaml and the per-service-provider fields.

Only pydantic models and SAML constants live here, so bridge.config and
bridge.relying_parties can import them without pulling in lxml or xmlsec.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bridge.schema import Strict

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDINGS = {"redirect": BINDING_REDIRECT, "post": BINDING_POST}

NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_FORMATS = {
    "persistent": NAMEID_PERSISTENT,
    "transient": NAMEID_TRANSIENT,
    "email": NAMEID_EMAIL,
    "unspecified": NAMEID_UNSPECIFIED,
}
NAMEID_SHORT = {uri: short for short, uri in NAMEID_FORMATS.items()}

_PEM_BODY = re.compile(r"-----BEGIN CERTIFICATE-----|-----END CERTIFICATE-----|\s+")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_HTTP_URL = re.compile(r"^https?://[^\s#]+$")


def normalize_certificate(value: str) -> str:
    """One line of Base64 DER, whether given as PEM or as metadata's X509Certificate text."""
    body = _PEM_BODY.sub("", value)
    if not body or not _BASE64.match(body) or len(body) % 4:
        raise ValueError("must be an X.509 certificate (PEM or Base64 DER)")
    return body


class SamlIdpConfig(Strict):
    """The `saml:` section of bridge.yaml: this bridge as a SAML 2.0 identity provider."""

    enabled: bool = True
    # Defaults to <public_url>/saml/metadata (see BridgeConfig.saml_entity_id).
    entity_id: str | None = Field(default=None, min_length=1, max_length=1024)
    assertion_lifetime_seconds: int = Field(default=300, ge=30, le=3600)
    clock_skew_seconds: int = Field(default=180, ge=0, le=900)
    sign_metadata: bool = False
    metadata_valid_hours: int = Field(default=168, ge=1, le=24 * 365)
    # Upper bound of a SAMLRequest after Base64 decoding and inflating (S11).
    max_message_bytes: int = Field(default=256 * 1024, ge=4 * 1024, le=4 * 1024 * 1024)
    # SAML bindings 3.4.3 caps RelayState at 80 bytes (S09), but mod_auth_mellon and
    # python3-saml send the page's whole return URL there; raise this to serve such SPs.
    max_relay_state_bytes: int = Field(default=80, ge=80, le=2048)
    # How often SPs registered with a metadata URL are re-read (can be overridden per SP).
    metadata_refresh_minutes: int = Field(default=360, ge=5, le=7 * 24 * 60)


class SamlEndpoint(Strict):
    """One ACS or SLO endpoint of a service provider."""

    url: str = Field(max_length=2048)
    binding: Literal["post", "redirect"] = "post"
    index: int | None = Field(default=None, ge=0, le=65535)
    default: bool = False
    response_url: str | None = Field(default=None, max_length=2048)

    @field_validator("url", "response_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _HTTP_URL.match(value):
            raise ValueError("must be an absolute http(s) URL without fragment")
        return value

    @property
    def binding_uri(self) -> str:
        """The binding as its SAML URI."""
        return BINDINGS[self.binding]


class SamlServiceProviderSettings(Strict):
    """Protocol settings of one SAML service provider (mixed into SamlRelyingParty)."""

    acs: tuple[SamlEndpoint, ...] = ()
    slo: tuple[SamlEndpoint, ...] = ()
    signing_certificates: tuple[str, ...] = ()
    encryption_certificates: tuple[str, ...] = ()
    sign_assertion: bool = True
    sign_response: bool = False
    # Encrypt when the SP has an encryption certificate, unless turned off here.
    encrypt_assertion: bool = True
    name_id_formats: tuple[Literal["persistent", "transient", "email", "unspecified"], ...] = (
        "persistent",
        "transient",
        "email",
        "unspecified",
    )
    # Persistent NameIDs differ per SP (an HMAC of subject and entityID) unless turned off.
    pairwise_persistent: bool = True
    want_authn_requests_signed: bool = False
    # Only for peers that cannot do better (S06): accept and produce RSA-SHA1.
    allow_sha1: bool = False
    metadata_url: str | None = Field(default=None, max_length=2048)
    metadata_refresh_minutes: int | None = Field(default=None, ge=5, le=7 * 24 * 60)
    # When set, fetched metadata must carry a valid signature by this certificate.
    metadata_signing_certificate: str | None = None

    @field_validator("signing_certificates", "encryption_certificates")
    @classmethod
    def _certificates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_certificate(item) for item in value)

    @field_validator("metadata_signing_certificate")
    @classmethod
    def _metadata_certificate(cls, value: str | None) -> str | None:
        return None if value is None else normalize_certificate(value)

    @field_validator("metadata_url")
    @classmethod
    def _metadata_url(cls, value: str | None) -> str | None:
        if value is not None and not _HTTP_URL.match(value):
            raise ValueError("must be an absolute http(s) URL")
        return value

    @model_validator(mode="after")
    def _endpoints(self) -> SamlServiceProviderSettings:
        indexes = [endpoint.index for endpoint in self.acs if endpoint.index is not None]
        if len(indexes) != len(set(indexes)):
            raise ValueError("acs: two endpoints share an index")
        if sum(1 for endpoint in self.acs if endpoint.default) > 1:
            raise ValueError("acs: at most one endpoint can be the default")
        if not self.name_id_formats:
            raise ValueError("name_id_formats: at least one format is needed")
        return self
