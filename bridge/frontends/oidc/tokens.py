"""Signed JWTs the provider issues and accepts: RFC 9068 access tokens, ID tokens, JWKS.

Keys come from the key ring (`jwt-es256`, `jwt-rs256`). Verification of our own tokens picks
the key by `kid` among the published ones and allows exactly that key's algorithm, so `none`,
HS256-with-our-public-key and foreign `jku`/`x5u` headers cannot succeed (checklist O08).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from bridge.keys import KeyRing, SigningKey

ACCESS_TOKEN_TYPE = "at+jwt"
USE_FOR_ALG = {"ES256": "jwt-es256", "RS256": "jwt-rs256"}
# Headers that would make a verifier fetch or trust key material named by the token itself.
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
MAX_TOKEN_LENGTH = 16 * 1024


class TokenInvalid(Exception):
    """A JWT that is malformed, not ours, badly signed or expired."""


@dataclass(frozen=True)
class VerifiedToken:
    """A verified JWT: its header and claims."""

    header: dict[str, Any]
    claims: dict[str, Any]


def half_hash(value: str, alg: str) -> str:
    """at_hash / c_hash: the left half of the SHA-256 of the value, base64url (ES256, RS256)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


class TokenSigner:
    """Signs and verifies the bridge's JWTs with the key ring's current keys."""

    def __init__(self, keys: KeyRing, issuer: str, clock: Callable[[], float]):
        self.keys = keys
        self.issuer = issuer
        self.clock = clock
        self._jose_keys: dict[str, ECKey | RSAKey] = {}
        self._signers: dict[tuple[str, str], tuple[bytes, Callable[[bytes], bytes]]] = {}

    def _jose_key(self, key: SigningKey) -> ECKey | RSAKey:
        # Importing a key costs more than signing with it: do it once per kid.
        jose = self._jose_keys.get(key.kid)
        if jose is None:
            cls = ECKey if key.algorithm == "ES256" else RSAKey
            jose = cls.import_key(key.private_key)
            self._jose_keys[key.kid] = jose
        return jose

    def sign(self, claims: Mapping[str, Any], alg: str, typ: str = "JWT") -> str:
        """Sign claims with the current key for alg (ES256 or RS256), as a compact JWS."""
        key = self.keys.current(USE_FOR_ALG[alg])
        signer = self._signers.get((key.kid, typ))
        if signer is None:
            signer = self._signers[(key.kid, typ)] = _compact_signer(key, alg, typ)
        encoded_header, signature_of = signer
        signing_input = encoded_header + b"." + _b64(_COMPACT.encode(dict(claims)).encode())
        return (signing_input + b"." + _b64(signature_of(signing_input))).decode("ascii")

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWK Set: current, next and recently retired keys of both algorithms."""
        return self.keys.jwks()

    def verify(
        self,
        token: str,
        *,
        typ: str | None = None,
        check_expiry: bool = True,
    ) -> VerifiedToken:
        """Verify one of our own JWTs (signature by a published key, iss, exp, typ)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("malformed token")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise TokenInvalid("malformed token") from exc
        if set(header) & FORBIDDEN_HEADERS:
            raise TokenInvalid("token names its own key material")
        kid = header.get("kid")
        published = {
            k.kid: k for use in USE_FOR_ALG.values() for k in self.keys.published(use)
        }
        key = published.get(kid) if isinstance(kid, str) else None
        if key is None or header.get("alg") != key.algorithm:
            raise TokenInvalid("unknown key or algorithm")
        if typ is not None and str(header.get("typ", "")).lower() not in (
            typ,
            f"application/{typ}",
        ):
            raise TokenInvalid("wrong token type")
        try:
            decoded = jwt.decode(token, self._jose_key(key), algorithms=[key.algorithm])
        except (JoseError, ValueError) as exc:
            raise TokenInvalid("bad signature") from exc
        claims = decoded.claims
        if claims.get("iss") != self.issuer:
            raise TokenInvalid("wrong issuer")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise TokenInvalid("no expiry")
        if check_expiry and exp <= self.clock():
            raise TokenInvalid("expired")
        return VerifiedToken(dict(decoded.header), dict(claims))


def _compact_signer(key: SigningKey, alg: str, typ: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    """The encoded JWS header for this key and type, and the function that signs with it.

    Both are fixed per key: the header is encoded once, and the signature is the
    `cryptography` call joserfc's ES256 / RS256 algorithms make (RFC 7518 section 3.4: ES256 is
    the 32-byte r and s, not DER), without re-checking the key's allowed operations each time.
    Tokens are verified with joserfc (and by the tests with PyJWT).
    """
    if key.algorithm != alg:
        raise ValueError(f"key {key.kid} is {key.algorithm}, not {alg}")
    header = {"alg": alg, "typ": typ, "kid": key.kid}
    encoded_header = _b64(_COMPACT.encode(header).encode())
    private = key.private_key
    if alg == "ES256":
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
            raise ValueError(f"key {key.kid} is not a P-256 key")

        def es256(data: bytes) -> bytes:
            r, s = decode_dss_signature(private.sign(data, _ECDSA_SHA256))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return encoded_header, es256
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"key {key.kid} is not an RSA key")

    def rs256(data: bytes) -> bytes:
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return encoded_header, rs256


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def new_jti() -> str:
    """A unique token id (128 bits)."""
    return secrets.token_urlsafe(16)


def digest(value: str) -> str:
    """SHA-256 hex of a secret value: codes and refresh tokens are stored under it."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def iso_now(clock: Callable[[], float]) -> str:
    """The clock's time as ISO 8601 (for records meant to be read by people)."""
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds")


# One encoder for every token and response (json.dumps builds one per call for separators).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact_json(value: Any) -> str:
    """JSON without spaces (token responses are on the hot path)."""
    return _COMPACT.encode(value)
