"""Tests for bridge.keys: generation, file layout and modes, load checks, rotation, secrets."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from bridge import keys
from bridge.keys import (
    KEY_USES,
    KeyFileError,
    KeyRing,
    KeysMissing,
    SigningKey,
    generate,
    load_or_create_secret,
    rotate,
)

REPO = Path(__file__).resolve().parents[1]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def thumbprint(jwk: dict) -> str:
    """RFC 7638, computed independently of bridge.keys."""
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = "{" + ",".join(f'"{name}":"{jwk[name]}"' for name in required) + "}"
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def kid_of(directory: Path, use: str, state: str) -> str:
    """Read a kid from the index without loading (and RSA-checking) every key."""
    entries = json.loads((directory / "keyset.json").read_text())["keys"]
    return next(e["kid"] for e in entries if e["use"] == use and e["state"] == state)


def private_numbers(key: SigningKey) -> list[str]:
    numbers = key.private_key.private_numbers()
    if isinstance(numbers, rsa.RSAPrivateNumbers):
        values = [numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp]
    else:
        values = [numbers.private_value]
    return [str(v) for v in values] + [format(v, "x") for v in values]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template") / "certs"
    generate(directory, rsa_bits=2048, now=T0)
    return directory


@pytest.fixture
def keydir(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of a generated (non-development) keyset, modes preserved."""
    directory = tmp_path / "certs"
    shutil.copytree(template, directory)
    return directory


# ------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------


def test_generate_creates_current_and_next_per_use(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "certs"
    created = generate(directory, rsa_bits=2048, now=T0)

    assert len(created) == 6
    assert mode(directory) == 0o700
    for use in KEY_USES:
        states = sorted(k.state for k in created if k.use == use)
        assert states == ["current", "next"]
    for key in created:
        assert key.created == T0
        assert key.retired_at is None
        assert key.development is False
        if key.use == "jwt-es256":
            assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
            assert isinstance(key.private_key.curve, ec.SECP256R1)
            assert key.algorithm == "ES256"
            assert key.certificate is None
        else:
            assert isinstance(key.private_key, rsa.RSAPrivateKey)
            assert key.private_key.key_size >= 2048
            assert key.algorithm == ("RSA-SHA256" if key.use == "saml" else "RS256")
            assert (key.certificate is not None) == (key.use == "saml")
    assert len({k.kid for k in created}) == 6

    ring = KeyRing.load(directory)
    assert [k.kid for k in ring.all()] == [k.kid for k in created]
    for use in KEY_USES:
        assert ring.current(use).use == use
        assert ring.next(use) is not None


def test_files_and_modes(keydir: Path) -> None:
    ring = KeyRing.load(keydir)
    assert mode(keydir / "keyset.json") == 0o600
    for key in ring.all():
        pem_path = keydir / f"{key.kid}.key.pem"
        assert mode(pem_path) == 0o600
        assert pem_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
        loaded = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
        assert loaded.public_key() == key.public_key()
        cert_path = keydir / f"{key.kid}.crt.pem"
        if key.use == "saml":
            assert mode(cert_path) == 0o644
            assert cert_path.read_text() == key.certificate_pem()
        else:
            assert not cert_path.exists()
    index = (keydir / "keyset.json").read_text()
    assert "PRIVATE" not in index
    assert sorted(p.name for p in keydir.glob("*.tmp")) == []


def test_default_sizes_and_minimum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2048"):
        generate(tmp_path / "k", rsa_bits=1024)
    with pytest.raises(ValueError, match="2048"):
        generate(tmp_path / "k", jwt_rsa_bits=1024)
    with pytest.raises(ValueError, match="unknown key use"):
        generate(tmp_path / "k", uses=("hs256",))
    created = generate(tmp_path / "k", uses=("jwt-rs256",))
    assert {k.private_key.key_size for k in created} == {2048}


def test_saml_certificate(tmp_path: Path) -> None:
    created = generate(
        tmp_path / "k", uses=("saml",), rsa_bits=2048, saml_common_name="Contoso IdP", now=T0
    )
    assert len(created) == 2
    serials = set()
    for key in created:
        cert = key.certificate
        assert cert is not None
        cert.verify_directly_issued_by(cert)  # self-signed, signature verifies with its own key
        assert cert.issuer == cert.subject
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert cert.public_key() == key.public_key()
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Contoso IdP"
        assert cert.not_valid_before_utc == T0
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert timedelta(days=3650) <= lifetime <= timedelta(days=3653)
        assert cert.serial_number > 0
        serials.add(cert.serial_number)
        assert cert.fingerprint(hashes.SHA256()).hex().startswith(key.kid)
        der = base64.b64decode(key.certificate_der_b64(), validate=True)
        assert x509.load_der_x509_certificate(der) == cert
        assert "\n" not in key.certificate_der_b64()
        assert key.certificate_pem().startswith("-----BEGIN CERTIFICATE-----")
        with pytest.raises(ValueError):
            key.public_jwk()  # SAML keys are never published in the JWKS
    assert len(serials) == 2
    default = generate(tmp_path / "d", uses=("saml",), rsa_bits=2048)[0].certificate
    assert default.subject.rfc4514_string() == "CN=Bridge SAML signing"


def test_jwks_public_members_only_and_thumbprint_kids(keydir: Path) -> None:
    ring = KeyRing.load(keydir)
    jwks = ring.jwks()
    assert len(jwks["keys"]) == 4
    kids = [jwk["kid"] for jwk in jwks["keys"]]
    assert len(set(kids)) == len(kids)
    for use in ("jwt-es256", "jwt-rs256"):
        for key in ring.published(use):
            jwk = key.public_jwk()
            assert not PRIVATE_MEMBERS & jwk.keys()
            assert jwk["use"] == "sig"
            assert jwk["alg"] == key.algorithm
            assert jwk["kid"] == key.kid == thumbprint(jwk)
            if use == "jwt-es256":
                assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
                assert jwk["crv"] == "P-256"
            else:
                assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
            assert jwk in jwks["keys"]
        with pytest.raises(ValueError):
            ring.current(use).certificate_pem()


def test_rfc7638_example_thumbprint() -> None:
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvzq"
        "Y368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
        "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    modulus = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    public = rsa.RSAPublicNumbers(65537, modulus).public_key()
    assert keys._jwk_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_jwks_verifies_tokens_signed_with_current_keys(keydir: Path) -> None:
    ring = KeyRing.load(keydir)
    key_set = KeySet.import_key_set(ring.jwks())
    for use, key_class in (("jwt-es256", ECKey), ("jwt-rs256", RSAKey)):
        key = ring.current(use)
        signing = key_class.import_key(key.private_key)
        token = jwt.encode({"alg": key.algorithm, "kid": key.kid}, {"sub": "alice"}, signing)
        assert jwt.decode(token, key_set).claims["sub"] == "alice"


def test_generate_is_idempotent_without_force(keydir: Path) -> None:
    before = (keydir / "keyset.json").read_bytes()
    files = sorted(p.name for p in keydir.iterdir())
    assert generate(keydir, rsa_bits=2048) == []
    assert generate(keydir, rsa_bits=2048, development=True) == []
    assert (keydir / "keyset.json").read_bytes() == before
    assert sorted(p.name for p in keydir.iterdir()) == files


def test_generate_force_retires_existing(keydir: Path) -> None:
    old = KeyRing.load(keydir)
    later = T0 + timedelta(days=1)
    created = generate(keydir, rsa_bits=2048, force=True, now=later)
    assert len(created) == 6
    ring = KeyRing.load(keydir)
    assert len(ring.all()) == 12
    for key in old.all():
        retired = ring.get(key.kid)
        assert retired is not None
        assert retired.state == "retired"
        assert retired.retired_at == later
    for use in KEY_USES:
        assert ring.current(use).kid not in {k.kid for k in old.all()}
        published = [k.kid for k in ring.published(use, now=later)]
        assert published[:2] == [ring.current(use).kid, ring.next(use).kid]
        assert len(published) == 4


def test_generate_only_requested_uses(tmp_path: Path) -> None:
    created = generate(tmp_path / "k", uses=("jwt-es256",))
    assert {k.use for k in created} == {"jwt-es256"}
    ring = KeyRing.load(tmp_path / "k")
    with pytest.raises(KeysMissing, match="saml"):
        ring.current("saml")
    assert ring.next("saml") is None
    assert ring.published("saml") == []
    with pytest.raises(ValueError):
        ring.current("nope")


# ------------------------------------------------------------------------------------------
# rotate
# ------------------------------------------------------------------------------------------


def test_rotate_moves_next_to_current_and_publishes_retired_within_window(keydir: Path) -> None:
    before = KeyRing.load(keydir)
    rotated_at = T0 + timedelta(days=30)
    created = rotate(keydir, now=rotated_at)
    assert [(k.use, k.state, k.development) for k in created] == [
        (use, "next", False) for use in KEY_USES
    ]
    ring = KeyRing.load(keydir, retired_publish_seconds=3600)
    for use in KEY_USES:
        old_current, old_next = before.current(use), before.next(use)
        assert ring.current(use).kid == old_next.kid
        assert ring.next(use).kid not in (old_current.kid, old_next.kid)
        retired = ring.get(old_current.kid)
        assert retired.state == "retired" and retired.retired_at == rotated_at

        inside = [k.kid for k in ring.published(use, now=rotated_at + timedelta(minutes=59))]
        assert inside == [old_next.kid, ring.next(use).kid, old_current.kid]
        after = [k.kid for k in ring.published(use, now=rotated_at + timedelta(minutes=61))]
        assert after == [old_next.kid, ring.next(use).kid]
    jwks_kids = {j["kid"] for j in ring.jwks(now=rotated_at)["keys"]}
    assert before.current("jwt-es256").kid in jwks_kids
    assert before.current("jwt-rs256").kid in jwks_kids
    # The default window is one day.
    default = KeyRing.load(keydir)
    assert len(default.published("saml", now=rotated_at + timedelta(hours=23))) == 3
    assert len(default.published("saml", now=rotated_at + timedelta(hours=25))) == 2


def test_rotate_keeps_key_parameters(tmp_path: Path) -> None:
    generate(tmp_path, uses=("saml",), rsa_bits=2048, saml_common_name="Fabrikam")
    (new,) = rotate(tmp_path, uses=("saml",))
    assert new.private_key.key_size == 2048
    assert new.certificate.subject.rfc4514_string() == "CN=Fabrikam"


def test_rotate_prunes_old_retired_keys(keydir: Path) -> None:
    first_current = kid_of(keydir, "jwt-es256", "current")
    for step in range(1, 5):
        rotate(keydir, uses=("jwt-es256",), keep_retired=2, now=T0 + timedelta(hours=step))
    ring = KeyRing.load(keydir)
    retired = [k for k in ring.all() if k.use == "jwt-es256" and k.state == "retired"]
    assert len(retired) == 2
    assert [k.retired_at for k in retired] == [T0 + timedelta(hours=4), T0 + timedelta(hours=3)]
    assert ring.get(first_current) is None
    assert not (keydir / f"{first_current}.key.pem").exists()
    on_disk = {p.name.removesuffix(".key.pem") for p in keydir.glob("*.key.pem")}
    assert on_disk == {k.kid for k in ring.all()}
    # Other uses were not rotated.
    assert len([k for k in ring.all() if k.use == "saml"]) == 2


def test_rotate_without_keys_is_keys_missing(tmp_path: Path) -> None:
    with pytest.raises(KeysMissing):
        rotate(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    with pytest.raises(KeysMissing):
        rotate(tmp_path)


# ------------------------------------------------------------------------------------------
# Development keys
# ------------------------------------------------------------------------------------------


def test_development_keys_and_warnings(tmp_path: Path) -> None:
    generate(tmp_path, development=True, rsa_bits=2048)
    ring = KeyRing.load(tmp_path)
    assert len(ring.development_keys()) == 6
    warnings = ring.warnings()
    assert len(warnings) == 3
    for use, message in zip(KEY_USES, warnings, strict=True):
        assert message.startswith(f"DEVELOPMENT KEYS IN USE for {use}")
        assert "bridge keys generate --force" in message

    # One rotation leaves the (development) next key signing; a second clears it.
    rotate(tmp_path)
    ring = KeyRing.load(tmp_path)
    assert {(k.state, k.development) for k in ring.development_keys()} == {("current", True)}
    assert len(ring.warnings()) == 3
    rotate(tmp_path)
    ring = KeyRing.load(tmp_path)
    assert ring.development_keys() == []
    assert ring.warnings() == []


def test_force_generate_replaces_development_keys(tmp_path: Path) -> None:
    generate(tmp_path, development=True, uses=("jwt-es256",))
    assert KeyRing.load(tmp_path).warnings()
    generate(tmp_path, uses=("jwt-es256",), force=True)
    ring = KeyRing.load(tmp_path)
    assert ring.development_keys() == []
    assert ring.warnings() == []


def test_warning_for_saml_certificate_near_expiry(tmp_path: Path) -> None:
    generate(tmp_path, uses=("saml",), rsa_bits=2048, saml_validity_days=30, now=T0)
    ring = KeyRing.load(tmp_path)
    assert any("expires" in w for w in ring.warnings(now=T0))
    assert any("EXPIRED" in w for w in ring.warnings(now=T0 + timedelta(days=31)))


# ------------------------------------------------------------------------------------------
# No private material in repr/str
# ------------------------------------------------------------------------------------------


def test_repr_and_str_hide_private_material(keydir: Path) -> None:
    ring = KeyRing.load(keydir)
    texts = [repr(ring), str(ring)]
    for key in ring.all():
        texts += [repr(key), str(key), json.dumps(key.describe())]
    joined = "\n".join(texts)
    assert "PRIVATE KEY" not in joined
    assert "private_key" not in joined
    for key in ring.all():
        assert key.kid in repr(ring)
        for number in private_numbers(key):
            assert number not in joined


# ------------------------------------------------------------------------------------------
# Loading checks
# ------------------------------------------------------------------------------------------


def test_missing_index_is_keys_missing(tmp_path: Path) -> None:
    with pytest.raises(KeysMissing, match="bridge keys generate"):
        KeyRing.load(tmp_path)
    assert issubclass(KeysMissing, Exception)


def test_refuses_group_or_world_readable_private_key(keydir: Path) -> None:
    kid = kid_of(keydir, "saml", "current")
    path = keydir / f"{kid}.key.pem"
    for bad_mode in (0o644, 0o640, 0o604):
        os.chmod(path, bad_mode)
        with pytest.raises(KeyFileError) as info:
            KeyRing.load(keydir)
        assert str(path) in str(info.value)
        assert f"chmod 600 {path}" in str(info.value)
    os.chmod(path, 0o600)
    KeyRing.load(keydir)
    os.chmod(path, 0o400)
    KeyRing.load(keydir)


def test_corrupt_pem_is_key_file_error_without_key_material(keydir: Path) -> None:
    kid = kid_of(keydir, "saml", "current")
    path = keydir / f"{kid}.key.pem"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # truncated; mode stays 0600
    with pytest.raises(KeyFileError) as info:
        KeyRing.load(keydir)
    message = str(info.value)
    assert str(path) in message
    assert all(line not in message for line in lines[1:-1])
    path.write_text("garbage")
    with pytest.raises(KeyFileError):
        KeyRing.load(keydir)


def test_missing_or_mismatched_certificate(keydir: Path) -> None:
    current, nxt = kid_of(keydir, "saml", "current"), kid_of(keydir, "saml", "next")
    shutil.copy(keydir / f"{nxt}.crt.pem", keydir / f"{current}.crt.pem")
    with pytest.raises(KeyFileError, match="does not match"):
        KeyRing.load(keydir)
    (keydir / f"{current}.crt.pem").unlink()
    with pytest.raises(KeyFileError, match="certificate file .* is missing"):
        KeyRing.load(keydir)


def test_missing_private_key_file(keydir: Path) -> None:
    kid = kid_of(keydir, "jwt-es256", "next")
    (keydir / f"{kid}.key.pem").unlink()
    with pytest.raises(KeyFileError, match="missing"):
        KeyRing.load(keydir)


def test_swapped_key_file_is_detected(keydir: Path) -> None:
    a, b = kid_of(keydir, "jwt-es256", "current"), kid_of(keydir, "jwt-es256", "next")
    os.replace(keydir / f"{a}.key.pem", keydir / "tmp.pem")
    os.replace(keydir / f"{b}.key.pem", keydir / f"{a}.key.pem")
    os.replace(keydir / "tmp.pem", keydir / f"{b}.key.pem")
    with pytest.raises(KeyFileError, match="thumbprint"):
        KeyRing.load(keydir)


def test_symlinked_private_key_is_refused(keydir: Path, tmp_path: Path) -> None:
    kid = kid_of(keydir, "jwt-es256", "current")
    path = keydir / f"{kid}.key.pem"
    elsewhere = tmp_path / "elsewhere.pem"
    os.replace(path, elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(KeyFileError, match="symbolic link"):
        KeyRing.load(keydir)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda doc: doc.update(version=99),
        lambda doc: doc["keys"][0].update(kid="../../../etc/passwd"),
        lambda doc: doc["keys"][0].update(use="hs256"),
        lambda doc: doc["keys"][1].update(state="current"),
        lambda doc: doc["keys"][0].update(created="yesterday"),
        lambda doc: doc["keys"].append(dict(doc["keys"][0])),
    ],
)
def test_malformed_index_is_key_file_error(keydir: Path, mutate) -> None:
    index = keydir / "keyset.json"
    document = json.loads(index.read_text())
    mutate(document)
    index.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="malformed"):
        KeyRing.load(keydir)


def test_invalid_json_index(keydir: Path) -> None:
    (keydir / "keyset.json").write_text("{not json")
    with pytest.raises(KeyFileError, match="JSON"):
        KeyRing.load(keydir)


# ------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------


def test_load_or_create_secret_is_stable_and_private(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    first = load_or_create_secret(directory)
    assert len(first) == 32
    assert mode(directory / "session-secret") == 0o600
    assert mode(directory) == 0o700
    assert load_or_create_secret(directory) == first
    other = load_or_create_secret(directory, name="csrf-secret", nbytes=48)
    assert len(other) == 48 and other != first
    assert list(directory.glob("*.tmp")) == [] and list(directory.glob(".*.tmp")) == []
    with pytest.raises(ValueError):
        load_or_create_secret(directory, name="../escape")
    os.chmod(directory / "session-secret", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_secret(directory)


def test_load_or_create_secret_race(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def worker() -> None:
        barrier.wait()
        results.append(load_or_create_secret(tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert (tmp_path / "session-secret").read_bytes() == results[0]


# ------------------------------------------------------------------------------------------
# Concurrency between processes
# ------------------------------------------------------------------------------------------

CHILD = """
import pathlib, sys, time
from bridge.keys import generate
directory, go, ready = sys.argv[1:4]
pathlib.Path(ready).touch()
deadline = time.monotonic() + 30
while not pathlib.Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.002)
print(len(generate(directory, rsa_bits=2048)))
"""


def test_concurrent_generate_from_two_processes(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(go), str(tmp_path / f"ready{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline
        time.sleep(0.002)
    go.touch()
    outputs = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert sorted(int(out) for out, _ in outputs) == [0, 6]

    ring = KeyRing.load(directory)
    assert len(ring.all()) == 6
    for use in KEY_USES:
        assert [k.state for k in ring.all() if k.use == use] == ["current", "next"]
    on_disk = {p.name.removesuffix(".key.pem") for p in directory.glob("*.key.pem")}
    assert on_disk == {k.kid for k in ring.all()}
