"""Signing keys: SAML (RSA + self-signed certificate), JWT ES256 and RS256, in one directory.

Each key use has a ``current`` key (signs), a ``next`` key (published ahead of time so relying
parties and Entra cache it before it signs anything) and ``retired`` keys (kept published for a
while so tokens they signed still verify).  Layout of the keys directory (0700)::

    keyset.json        index, no secret material (0600, replaced atomically)
    <kid>.key.pem      PKCS#8 private key (0600, created O_EXCL; never chmod-ed after writing)
    <kid>.crt.pem      SAML keys only: self-signed X.509 certificate (0644)
    .lock              flock taken by generate/rotate so two invocations cannot interleave

Private key material is never logged, printed, put in an exception message or returned as PEM.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "KEY_USES",
    "JWT_USES",
    "INDEX_NAME",
    "KeyRingError",
    "KeysMissing",
    "KeyFileError",
    "SigningKey",
    "KeyRing",
    "generate",
    "rotate",
    "load_or_create_secret",
]

KEY_USES: tuple[str, ...] = ("saml", "jwt-es256", "jwt-rs256")
JWT_USES: tuple[str, ...] = ("jwt-es256", "jwt-rs256")
STATES: tuple[str, ...] = ("current", "next", "retired")
INDEX_NAME = "keyset.json"
LOCK_NAME = ".lock"
INDEX_VERSION = 1

MIN_RSA_BITS = 2048
DEFAULT_SAML_RSA_BITS = 3072
DEFAULT_JWT_RSA_BITS = 2048
DEFAULT_SAML_COMMON_NAME = "Bridge SAML signing"
DEFAULT_SAML_VALIDITY_DAYS = 3652  # ten years, leap days included
DEFAULT_RETIRED_PUBLISH_SECONDS = 86400
DEFAULT_KEEP_RETIRED = 5
CERT_EXPIRY_WARNING = timedelta(days=60)

_ALGORITHMS = {"saml": "RSA-SHA256", "jwt-es256": "ES256", "jwt-rs256": "RS256"}
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SAML_KID_HEX_CHARS = 32  # 128 bits of the SHA-256 certificate fingerprint
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyRingError(Exception):
    """Base class of the errors raised by this module."""


class KeysMissing(KeyRingError):
    """The key index (or a key the caller asked for) does not exist yet."""


class KeyFileError(KeyRingError):
    """A file named by the key index is missing, unreadable, malformed or too widely readable."""


# --------------------------------------------------------------------------------------------
# SigningKey
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """One signing key with its metadata; the private key never shows up in repr()."""

    kid: str
    use: str
    state: str
    created: datetime
    development: bool
    retired_at: datetime | None
    private_key: PrivateKey = field(repr=False, compare=False)
    certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)

    @property
    def algorithm(self) -> str:
        """Signature algorithm: "ES256", "RS256" or "RSA-SHA256" (SAML)."""
        return _ALGORITHMS[self.use]

    def public_key(self) -> PublicKey:
        """The public half of the key (a cryptography public key object)."""
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """Public JWK (kty/crv/x/y or kty/n/e plus kid, use "sig", alg); JWT keys only."""
        if self.use not in JWT_USES:
            raise ValueError(f"{self.use} keys are not published as JWKs (kid {self.kid})")
        return _public_jwk_members(self.public_key()) | {
            "kid": self.kid,
            "use": "sig",
            "alg": self.algorithm,
        }

    def certificate_pem(self) -> str:
        """The X.509 certificate as PEM text (SAML keys only)."""
        return self._require_certificate().public_bytes(serialization.Encoding.PEM).decode("ascii")

    def certificate_der_b64(self) -> str:
        """The certificate as one line of Base64 DER, as SAML metadata and Microsoft Graph want."""
        der = self._require_certificate().public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode("ascii")

    def describe(self) -> dict[str, Any]:
        """JSON-safe, non-secret metadata for display (`bridge keys show`)."""
        info: dict[str, Any] = {
            "kid": self.kid,
            "use": self.use,
            "state": self.state,
            "algorithm": self.algorithm,
            "created": _iso(self.created),
            "retired_at": _iso(self.retired_at) if self.retired_at else None,
            "development": self.development,
        }
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            info["key_size"] = key.key_size
        else:
            info["curve"] = "P-256"
        if self.certificate is not None:
            cert = self.certificate
            info["subject"] = cert.subject.rfc4514_string()
            info["not_after"] = _iso(cert.not_valid_after_utc)
            info["sha256_fingerprint"] = cert.fingerprint(hashes.SHA256()).hex()
        return info

    def _require_certificate(self) -> x509.Certificate:
        if self.certificate is None:
            raise ValueError(f"{self.use} key {self.kid} has no certificate")
        return self.certificate


# --------------------------------------------------------------------------------------------
# KeyRing
# --------------------------------------------------------------------------------------------


class KeyRing:
    """The keys of one keys directory, loaded and checked; read-only."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        keys: Iterable[SigningKey],
        *,
        retired_publish_seconds: float = DEFAULT_RETIRED_PUBLISH_SECONDS,
    ) -> None:
        """Build a ring from already loaded keys; use `KeyRing.load` for a directory."""
        if retired_publish_seconds < 0:
            raise ValueError("retired_publish_seconds must be >= 0")
        self.directory = Path(directory)
        self.retired_publish_seconds = retired_publish_seconds
        self._keys: tuple[SigningKey, ...] = tuple(sorted(keys, key=_sort_key))
        self._by_kid = {key.kid: key for key in self._keys}

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        retired_publish_seconds: float = DEFAULT_RETIRED_PUBLISH_SECONDS,
    ) -> KeyRing:
        """Load and verify every key named by `<directory>/keyset.json`."""
        path = Path(directory)
        with _shared_lock(path):
            keys = _load_keys(path, validate=True)
        return cls(path, keys, retired_publish_seconds=retired_publish_seconds)

    def current(self, use: str) -> SigningKey:
        """The key that signs for `use`; KeysMissing if there is none."""
        _check_use(use)
        for key in self._keys:
            if key.use == use and key.state == "current":
                return key
        raise KeysMissing(f"no current {use} key in {self.directory}; run `bridge keys generate`")

    def next(self, use: str) -> SigningKey | None:
        """The pre-published key that becomes current at the next rotation, if any."""
        _check_use(use)
        for key in self._keys:
            if key.use == use and key.state == "next":
                return key
        return None

    def published(self, use: str, *, now: datetime | None = None) -> list[SigningKey]:
        """Keys to publish for `use`: current, next, then recently retired ones (newest first)."""
        _check_use(use)
        moment = _now(now)
        window = timedelta(seconds=self.retired_publish_seconds)
        keys = [k for k in self._keys if k.use == use and k.state in ("current", "next")]
        keys += [
            k
            for k in self._keys
            if k.use == use
            and k.state == "retired"
            and k.retired_at is not None
            and moment - k.retired_at <= window
        ]
        return keys

    def jwks(self, *, now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
        """JWK Set of the published JWT keys of every JWT use (public members only)."""
        keys = [k for use in JWT_USES for k in self.published(use, now=now)]
        return {"keys": [k.public_jwk() for k in keys]}

    def get(self, kid: str) -> SigningKey | None:
        """The key with this kid, whatever its state, or None."""
        return self._by_kid.get(kid)

    def all(self) -> list[SigningKey]:
        """Every key, grouped by use; current, next, then retired (newest first)."""
        return list(self._keys)

    def development_keys(self) -> list[SigningKey]:
        """Current or next keys that the quick start generated automatically."""
        return [k for k in self._keys if k.development and k.state in ("current", "next")]

    def warnings(self, *, now: datetime | None = None) -> list[str]:
        """Loud, human sentences about development keys and SAML certificates near expiry."""
        messages = []
        for use in KEY_USES:
            dev = [k for k in self.development_keys() if k.use == use]
            if dev:
                which = ", ".join(f"{k.state} {k.kid}" for k in dev)
                messages.append(
                    f"DEVELOPMENT KEYS IN USE for {use} ({which}): generated automatically by "
                    "the quick start; run `bridge keys generate --force` or rotate before "
                    "production"
                )
        moment = _now(now)
        for key in self._keys:
            if key.certificate is None or key.state == "retired":
                continue
            not_after = key.certificate.not_valid_after_utc
            if not_after <= moment:
                messages.append(
                    f"SAML CERTIFICATE EXPIRED for {key.state} key {key.kid} on "
                    f"{_iso(not_after)}; rotate the saml key"
                )
            elif not_after - moment <= CERT_EXPIRY_WARNING:
                messages.append(
                    f"SAML certificate of {key.state} key {key.kid} expires on "
                    f"{_iso(not_after)}; rotate the saml key and update relying parties"
                )
        return messages

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.use}:{k.state}:{k.kid}" for k in self._keys)
        return f"KeyRing(directory={str(self.directory)!r}, keys=[{keys}])"

    __str__ = __repr__


# --------------------------------------------------------------------------------------------
# generate / rotate
# --------------------------------------------------------------------------------------------


def generate(
    directory: str | os.PathLike[str],
    *,
    development: bool = False,
    uses: Iterable[str] = KEY_USES,
    rsa_bits: int = DEFAULT_SAML_RSA_BITS,
    jwt_rsa_bits: int = DEFAULT_JWT_RSA_BITS,
    saml_common_name: str = DEFAULT_SAML_COMMON_NAME,
    saml_validity_days: int = DEFAULT_SAML_VALIDITY_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> list[SigningKey]:
    """Create a current and a next key for each use lacking a current key; return the new keys.

    With ``force`` the current and next keys of those uses are retired and replaced. A use that
    has a current key but no next key only gets a new next key. ``rsa_bits`` sizes the SAML key,
    ``jwt_rsa_bits`` the RS256 key; both must be at least 2048.
    """
    use_list = _check_uses(uses)
    _check_rsa_bits(rsa_bits, "rsa_bits")
    _check_rsa_bits(jwt_rsa_bits, "jwt_rsa_bits")
    if saml_validity_days < 1:
        raise ValueError("saml_validity_days must be >= 1")
    moment = _now(now)
    path = Path(directory)
    _ensure_directory(path)
    with _exclusive_lock(path):
        # generate/rotate never sign, so they skip the slow RSA consistency check.
        keys = _load_keys(path, validate=False) if (path / INDEX_NAME).exists() else []
        created: list[SigningKey] = []

        def new(use: str, state: str) -> SigningKey:
            return _new_key(
                path,
                use,
                state,
                moment,
                development=development,
                saml_rsa_bits=rsa_bits,
                jwt_rsa_bits=jwt_rsa_bits,
                common_name=saml_common_name,
                validity_days=saml_validity_days,
                taken={k.kid for k in keys + created},
            )

        for use in use_list:
            current = _find(keys, use, "current")
            nxt = _find(keys, use, "next")
            if current is not None and not force:
                if nxt is None:
                    created.append(new(use, "next"))
                continue
            keys = [
                _retire(k, moment) if k.use == use and k.state in ("current", "next") else k
                for k in keys
            ]
            created += [new(use, "current"), new(use, "next")]
        if created or force:
            _write_index(path, keys + created)
        return created


def rotate(
    directory: str | os.PathLike[str],
    uses: Iterable[str] = KEY_USES,
    *,
    keep_retired: int = DEFAULT_KEEP_RETIRED,
    now: datetime | None = None,
) -> list[SigningKey]:
    """Per use: current -> retired, next -> current, a new next key; return the new keys.

    New keys are never development keys; they copy the key size (and SAML subject) of the key
    they follow. Afterwards only the ``keep_retired`` most recently retired keys of each rotated
    use are kept; older ones are removed from the index and then from disk.
    """
    use_list = _check_uses(uses)
    if keep_retired < 0:
        raise ValueError("keep_retired must be >= 0")
    moment = _now(now)
    path = Path(directory)
    if not path.is_dir():
        raise KeysMissing(f"no keys directory {path}; run `bridge keys generate`")
    with _exclusive_lock(path):
        keys = _load_keys(path, validate=False)
        missing = [use for use in use_list if _find(keys, use, "current") is None]
        if missing:
            raise KeysMissing(
                f"no current {', '.join(missing)} key in {path} to rotate; "
                "run `bridge keys generate`"
            )
        created: list[SigningKey] = []
        for use in use_list:
            current = _find(keys, use, "current")
            nxt = _find(keys, use, "next")
            template = nxt or current
            updated = []
            for key in keys:
                if key is current:
                    updated.append(_retire(key, moment))
                elif key is nxt:
                    updated.append(dataclasses.replace(key, state="current"))
                else:
                    updated.append(key)
            keys = updated
            states: tuple[str, ...] = ("next",) if nxt is not None else ("current", "next")
            rsa_bits, cn, validity = _template_parameters(template)
            for state in states:
                created.append(
                    _new_key(
                        path,
                        use,
                        state,
                        moment,
                        development=False,
                        saml_rsa_bits=rsa_bits,
                        jwt_rsa_bits=rsa_bits,
                        common_name=cn,
                        validity_days=validity,
                        taken={k.kid for k in keys + created},
                    )
                )
        keys = keys + created
        pruned = [
            key for use in use_list for key in _retired_newest_first(keys, use)[keep_retired:]
        ]
        pruned_kids = {k.kid for k in pruned}
        keys = [k for k in keys if k.kid not in pruned_kids]
        _write_index(path, keys)
        for key in pruned:
            for name in (f"{key.kid}.key.pem", f"{key.kid}.crt.pem"):
                with contextlib.suppress(FileNotFoundError):
                    (path / name).unlink()
        return created


# --------------------------------------------------------------------------------------------
# Random secrets (session secret and the like)
# --------------------------------------------------------------------------------------------


def load_or_create_secret(
    directory: str | os.PathLike[str], name: str = "session-secret", nbytes: int = 32
) -> bytes:
    """Read the random secret `<directory>/<name>`, creating it (0600) if it does not exist."""
    if not _SECRET_NAME_RE.match(name) or name == INDEX_NAME or name.endswith(".pem"):
        raise ValueError(f"invalid secret file name {name!r}")
    if nbytes < 16:
        raise ValueError("nbytes must be >= 16")
    path = Path(directory)
    _ensure_directory(path)
    target = path / name
    try:
        data = _read_private_file(target)
    except FileNotFoundError:
        # Write the whole secret to a private temp file, then link it into place: link() fails
        # if the name exists, so of two racing processes exactly one wins and the loser reads
        # the winner's complete file (never a half-written one).
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(nbytes))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, target)
        finally:
            os.unlink(tmp)
        _fsync_directory(path)
        data = _read_private_file(target)
    if len(data) < nbytes:
        raise KeyFileError(
            f"secret file {target} holds {len(data)} bytes, expected {nbytes}; "
            "delete it to have a new one generated"
        )
    return data


# --------------------------------------------------------------------------------------------
# Internals: key creation
# --------------------------------------------------------------------------------------------


def _new_key(
    directory: Path,
    use: str,
    state: str,
    moment: datetime,
    *,
    development: bool,
    saml_rsa_bits: int,
    jwt_rsa_bits: int,
    common_name: str,
    validity_days: int,
    taken: set[str],
) -> SigningKey:
    for _attempt in range(5):
        certificate = None
        if use == "saml":
            private_key: PrivateKey = rsa.generate_private_key(65537, saml_rsa_bits)
            certificate = _self_signed_certificate(private_key, common_name, moment, validity_days)
            kid = certificate.fingerprint(hashes.SHA256()).hex()[:_SAML_KID_HEX_CHARS]
        elif use == "jwt-es256":
            private_key = ec.generate_private_key(ec.SECP256R1())
            kid = _jwk_thumbprint(private_key.public_key())
        else:
            private_key = rsa.generate_private_key(65537, jwt_rsa_bits)
            kid = _jwk_thumbprint(private_key.public_key())
        if kid not in taken and not (directory / f"{kid}.key.pem").exists():
            break
    else:  # pragma: no cover - would take a broken random number generator
        raise KeyRingError(f"could not generate a {use} key with an unused kid")
    _write_private_key(directory / f"{kid}.key.pem", private_key)
    if certificate is not None:
        _write_public_file(
            directory / f"{kid}.crt.pem", certificate.public_bytes(serialization.Encoding.PEM)
        )
    return SigningKey(
        kid=kid,
        use=use,
        state=state,
        created=moment,
        development=development,
        retired_at=None,
        private_key=private_key,
        certificate=certificate,
    )


def _self_signed_certificate(
    key: rsa.RSAPrivateKey, common_name: str, moment: datetime, validity_days: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment)
        .not_valid_after(moment + timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _template_parameters(key: SigningKey) -> tuple[int, str, int]:
    rsa_bits = DEFAULT_JWT_RSA_BITS
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        rsa_bits = max(key.private_key.key_size, MIN_RSA_BITS)
    common_name = DEFAULT_SAML_COMMON_NAME
    validity = DEFAULT_SAML_VALIDITY_DAYS
    if key.certificate is not None:
        names = key.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names and isinstance(names[0].value, str):
            common_name = names[0].value
        span = key.certificate.not_valid_after_utc - key.certificate.not_valid_before_utc
        validity = max(span.days, 1)
    return rsa_bits, common_name, validity


def _public_jwk_members(public: PublicKey) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        members = ECKey.import_key(public).as_dict()
        allowed = ("kty", "crv", "x", "y")
    else:
        members = RSAKey.import_key(public).as_dict()
        allowed = ("kty", "n", "e")
    jwk = {name: members[name] for name in allowed}
    assert not _PRIVATE_JWK_MEMBERS & jwk.keys()
    return jwk


def _jwk_thumbprint(public: PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url without padding) of the public JWK."""
    members = _public_jwk_members(public)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _retire(key: SigningKey, moment: datetime) -> SigningKey:
    return dataclasses.replace(key, state="retired", retired_at=moment)


def _find(keys: list[SigningKey], use: str, state: str) -> SigningKey | None:
    return next((k for k in keys if k.use == use and k.state == state), None)


def _retired_newest_first(keys: list[SigningKey], use: str) -> list[SigningKey]:
    retired = [k for k in keys if k.use == use and k.state == "retired"]
    return sorted(retired, key=lambda k: (k.retired_at or k.created, k.created), reverse=True)


def _sort_key(key: SigningKey) -> tuple[int, int, float, str]:
    use_rank = KEY_USES.index(key.use) if key.use in KEY_USES else len(KEY_USES)
    when = key.retired_at or key.created
    return (use_rank, STATES.index(key.state), -when.timestamp(), key.kid)


# --------------------------------------------------------------------------------------------
# Internals: index and files
# --------------------------------------------------------------------------------------------


def _load_keys(directory: Path, *, validate: bool) -> list[SigningKey]:
    index_path = directory / INDEX_NAME
    try:
        raw = index_path.read_bytes()
    except FileNotFoundError:
        raise KeysMissing(
            f"no signing keys: {index_path} does not exist; run `bridge keys generate` "
            "(or start the quick start, which generates development keys)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key index {index_path}: {exc.strerror}") from None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key index {index_path} is not valid JSON: {exc}") from None
    entries = _validate_index(document, index_path)
    return [
        _load_entry(directory, entry, validate=validate and entry["state"] != "retired")
        for entry in entries
    ]


def _validate_index(document: Any, index_path: Path) -> list[dict[str, Any]]:
    def bad(message: str) -> KeyFileError:
        return KeyFileError(f"key index {index_path} is malformed: {message}")

    if not isinstance(document, dict) or document.get("version") != INDEX_VERSION:
        raise bad(f'expected an object with "version": {INDEX_VERSION}')
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise bad('"keys" must be a list')
    seen: set[str] = set()
    slots: set[tuple[str, str]] = set()
    result = []
    for position, entry in enumerate(entries):
        where = f"keys[{position}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} is not an object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not _KID_RE.match(kid):
            raise bad(f"{where}.kid is missing or not a valid key id")
        if kid in seen:
            raise bad(f"kid {kid} appears twice")
        seen.add(kid)
        use, state = entry.get("use"), entry.get("state")
        if use not in KEY_USES:
            raise bad(f"{where}.use must be one of {', '.join(KEY_USES)}")
        if state not in STATES:
            raise bad(f"{where}.state must be one of {', '.join(STATES)}")
        if state != "retired":
            if (use, state) in slots:
                raise bad(f"more than one {state} {use} key")
            slots.add((use, state))
        if not isinstance(entry.get("development"), bool):
            raise bad(f"{where}.development must be true or false")
        try:
            created = _parse_time(entry.get("created"))
            retired_at = (
                None if entry.get("retired_at") is None else _parse_time(entry["retired_at"])
            )
        except ValueError:
            raise bad(f"{where} has an invalid created/retired_at timestamp") from None
        if state == "retired" and retired_at is None:
            raise bad(f"{where} is retired but has no retired_at")
        result.append(entry | {"created": created, "retired_at": retired_at})
    return result


def _load_entry(directory: Path, entry: dict[str, Any], *, validate: bool) -> SigningKey:
    kid, use = entry["kid"], entry["use"]
    key_path = directory / f"{kid}.key.pem"
    try:
        pem = _read_private_file(key_path)
    except FileNotFoundError:
        raise KeyFileError(
            f"private key file {key_path} named by {INDEX_NAME} is missing; restore it from "
            "backup or regenerate the keys with `bridge keys generate --force`"
        ) from None
    try:
        # OpenSSL's RSA consistency check costs 0.1-0.25 s per key. KeyRing.load runs it on the
        # keys that may sign (current, next); retired keys only ever provide their public half
        # (matched against their kid or certificate below), so a long retired list loads fast.
        private_key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not validate
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The cryptography message may quote the input; do not let key material into errors.
        raise KeyFileError(
            f"private key file {key_path} is not an unencrypted PKCS#8 PEM private key"
        ) from None
    finally:
        del pem
    certificate = None
    if use == "saml":
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise KeyFileError(f"{key_path}: a saml key must be RSA")
        cert_path = directory / f"{kid}.crt.pem"
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except FileNotFoundError:
            raise KeyFileError(f"certificate file {cert_path} is missing") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read certificate {cert_path}: {exc.strerror}") from None
        except ValueError:
            raise KeyFileError(f"certificate file {cert_path} is not a PEM certificate") from None
        if certificate.public_key() != private_key.public_key():
            raise KeyFileError(f"certificate {cert_path} does not match private key {key_path}")
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        if not fingerprint.startswith(kid):
            raise KeyFileError(f"certificate {cert_path} does not have the fingerprint of {kid}")
    elif use == "jwt-es256":
        if not (
            isinstance(private_key, ec.EllipticCurvePrivateKey)
            and isinstance(private_key.curve, ec.SECP256R1)
        ):
            raise KeyFileError(f"{key_path}: a jwt-es256 key must be EC P-256")
    elif not isinstance(private_key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{key_path}: a jwt-rs256 key must be RSA")
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < MIN_RSA_BITS:
        raise KeyFileError(f"{key_path}: RSA key of {private_key.key_size} bits is too small")
    if use in JWT_USES and _jwk_thumbprint(private_key.public_key()) != kid:
        raise KeyFileError(f"{key_path} does not hold the key with thumbprint {kid}")
    return SigningKey(
        kid=kid,
        use=use,
        state=entry["state"],
        created=entry["created"],
        development=entry["development"],
        retired_at=entry["retired_at"],
        private_key=private_key,
        certificate=certificate,
    )


def _read_private_file(path: Path) -> bytes:
    """Read a secret file, refusing symlinks, non-regular files and group/world access."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(
                f"{path} is a symbolic link; secret files must be regular files"
            ) from None
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"refusing to use {path}: its permissions {mode:04o} let other users read or "
                f"change it; run `chmod 600 {path}`"
            )
        try:
            return handle.read()
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def _write_private_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    del pem


def _write_public_file(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o644)  # public certificate: readable whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_index(directory: Path, keys: list[SigningKey]) -> None:
    document = {
        "version": INDEX_VERSION,
        "keys": [
            {
                "kid": key.kid,
                "use": key.use,
                "state": key.state,
                "algorithm": key.algorithm,
                "created": _iso(key.created),
                "retired_at": _iso(key.retired_at) if key.retired_at else None,
                "development": key.development,
            }
            for key in sorted(keys, key=_sort_key)
        ],
    }
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keyset.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / INDEX_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _ensure_directory(path: Path) -> None:
    if path.is_dir():
        return
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, 0o700)  # a directory: chmod after mkdir is fine, there is nothing in it yet


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(directory: Path) -> Iterator[None]:
    _ensure_directory(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _shared_lock(directory: Path) -> Iterator[None]:
    """Shared lock while loading, so a concurrent rotate's pruning cannot pull files away.

    Skipped if the lock file does not exist or cannot be opened (read-only key directory).
    """
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Internals: small helpers
# --------------------------------------------------------------------------------------------


def _check_use(use: str) -> None:
    if use not in KEY_USES:
        raise ValueError(f"unknown key use {use!r}; expected one of {', '.join(KEY_USES)}")


def _check_uses(uses: Iterable[str]) -> list[str]:
    if isinstance(uses, str):
        uses = (uses,)
    result: list[str] = []
    for use in uses:
        _check_use(use)
        if use not in result:
            result.append(use)
    return result


def _check_rsa_bits(bits: int, name: str) -> None:
    if bits < MIN_RSA_BITS:
        raise ValueError(f"{name} must be at least {MIN_RSA_BITS}, got {bits}")


def _now(now: datetime | None) -> datetime:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("timestamp without time zone")
    return moment.astimezone(UTC)
