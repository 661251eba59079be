"""The `bridge` command line, run for real in a subprocess (exit codes, output, effects)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bridge import keys as keyring
from bridge.audit import AuditTrail
from bridge.config import load_config
from bridge.sources import Outcome
from bridge.sources.embedded import USER_KIND, EmbeddedDirectory
from bridge.store import AuditEvent, open_store
from tests.support import free_port, run_cli, write_config

KEY_USES = ("saml", "jwt-es256", "jwt-rs256")
GENERATED_PASSWORD = re.compile(r"^Password \(shown only this once\): (\S+)$", re.M)


def bridge(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`bridge <args> --config <config>` (options go after the subcommand)."""
    return run_cli(*args, "--config", str(config), input=input)


def bridge_many(
    config: Path, *commands: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands concurrently (each one mostly waits on imports and argon2)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: bridge(config, *args), commands))


@contextmanager
def directory_of(config: Path) -> Iterator[EmbeddedDirectory]:
    """The embedded directory of a config, opened in this process."""
    store = open_store(load_config(config).store)
    try:
        yield EmbeddedDirectory(store, "local")
    finally:
        store.close()




def port_refuses(port: int) -> bool:
    """True if nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def problem_lines(stderr: str) -> tuple[str, list[str]]:
    """Split `<file>: N problem(s):` and the `  - problem` lines that follow it."""
    header, *rest = stderr.splitlines()
    assert all(line.startswith("  - ") for line in rest), stderr
    return header, [line.removeprefix("  - ") for line in rest]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid config under tmp_path (no keys, no users yet)."""
    return write_config(tmp_path / "bridge")


@pytest.fixture
def local(config: Path) -> Iterator[EmbeddedDirectory]:
    """The config's embedded directory opened in this process, beside the CLI's processes."""
    with directory_of(config) as directory:
        yield directory


def outcome(directory: EmbeddedDirectory, username: str, password: str) -> Outcome:
    return directory.authenticate(username, password).outcome


# check-config


def test_check_config_ok(config: Path) -> None:
    result = bridge(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config.resolve()}: ok (1 source(s), 0 relying part(ies))\n"
    assert result.stderr == ""


def test_check_config_counts_relying_parties_and_reads_bridge_config_env(config: Path) -> None:
    rps = config.parent / "relying_parties"
    rps.mkdir()
    (rps / "wiki.yaml").write_text(
        "id: wiki\nname: Wiki\nprotocol: oidc\nclient_id: wiki\n"
        "redirect_uris: [https://wiki.example.com/callback]\n"
    )
    result = run_cli("check-config", env={"BRIDGE_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{config.resolve()}: ok (1 source(s), 1 relying part(ies))\n"


BAD_CONFIG = """\
server:
  public_url: ftp://sso.example.com
  bind: localhost
  workers: 0
  colour: blue
logging:
  level: LOUD
sources:
  - {id: local, type: embedded}
  - {id: local, type: embedded}
secret_key: "plain text is not allowed for secrets, however long it is"
bogus: 1
"""


def test_check_config_bad_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    result = bridge(path, "check-config")
    assert result.returncode == 2
    assert result.stdout == ""
    header, problems = problem_lines(result.stderr)
    assert header == f"{path.resolve()}: 8 problem(s):"
    expected_paths = [
        "server.public_url", "server.bind", "server.workers", "server.colour", "logging.level",
        "sources[1].id", "secret_key", "bogus",
    ]
    assert sorted(p.split(": ", 1)[0] for p in problems) == sorted(expected_paths)
    assert "bogus: unknown key" in problems
    assert "sources[1].id: source id 'local' is used twice" in problems
    assert "plain text is not allowed" not in result.stderr


def test_check_config_reports_relying_party_problems(config: Path) -> None:
    rps = config.parent / "relying_parties"
    rps.mkdir()
    (rps / "cas.yaml").write_text("id: cas\nname: CAS\nprotocol: cas\n")
    result = bridge(config, "check-config")
    assert result.returncode == 2
    header, problems = problem_lines(result.stderr)
    assert header == f"{rps}: 1 problem(s):"
    assert problems[0].startswith("cas.yaml: ")


# serve refuses to start


def test_serve_with_bad_config_exits_2_quickly_without_listening(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path / "bridge", port=port, server={"workers": 0})
    started = time.monotonic()
    result = bridge(path, "serve")
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert elapsed < 10
    header, problems = problem_lines(result.stderr)
    assert header == f"{path.resolve()}: 1 problem(s):"
    assert problems == ["server.workers: Input should be greater than or equal to 1"]
    assert port_refuses(port)


def test_serve_without_keys_says_to_generate_them(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path / "bridge", port=port)
    result = bridge(path, "serve")
    assert result.returncode == 2
    keys_dir = path.parent / "certs"
    assert result.stderr == f"error: no signing keys in {keys_dir}: run `bridge keys generate`\n"
    assert port_refuses(port)


# keys


def key_table(stdout: str) -> list[tuple[str, str, str]]:
    """(use, state, kid) of each line `bridge keys list` prints."""
    rows = []
    for line in stdout.splitlines():
        use, state, kid, created_word, *_ = line.split()
        assert created_word == "created", line
        rows.append((use, state, kid))
    return rows


def test_keys_generate_and_list(config: Path) -> None:
    generated = bridge(config, "keys", "generate", "--rsa-bits", "2048")
    assert generated.returncode == 0, generated.stderr
    listed = bridge(config, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = key_table(listed.stdout)
    assert sorted((use, state) for use, state, _ in rows) == sorted(
        (use, state) for use in KEY_USES for state in ("current", "next")
    )
    assert len({kid for _, _, kid in rows}) == 6
    assert key_table(generated.stdout) == rows  # generate printed the keys it made
    again = bridge(config, "keys", "generate", "--rsa-bits", "2048")
    assert again.returncode == 0
    assert again.stdout == "Every use already has a current key (use --force to replace them).\n"
    for result in (generated, listed, again):
        assert "PRIVATE KEY" not in result.stdout + result.stderr
        assert "BEGIN" not in result.stdout + result.stderr


def test_keys_rotate_retires_the_current_keys(config: Path) -> None:
    keys_dir = load_config(config).keys.dir
    keyring.generate(keys_dir, rsa_bits=2048)
    before = {(k.use, k.state): k.kid for k in keyring.KeyRing.load(keys_dir).all()}
    assert len(before) == 6
    rotated = bridge(config, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_next = key_table(rotated.stdout)
    assert [(use, state) for use, state, _ in new_next] == [(use, "next") for use in KEY_USES]
    listed = bridge(config, "keys", "list")
    rows = key_table(listed.stdout)
    assert len(rows) == 9
    after = {(use, state): kid for use, state, kid in rows}
    for use in KEY_USES:
        assert after[(use, "current")] != before[(use, "current")]
        assert after[(use, "current")] == before[(use, "next")]
        assert after[(use, "retired")] == before[(use, "current")]
        assert after[(use, "next")] not in before.values()
    assert {kid for _, _, kid in new_next} == {after[(use, "next")] for use in KEY_USES}
    assert "PRIVATE KEY" not in rotated.stdout + rotated.stderr + listed.stdout + listed.stderr


def test_keys_list_and_rotate_without_keys_fail(config: Path) -> None:
    commands = (("keys", "list"), ("keys", "rotate"))
    for args, result in zip(commands, bridge_many(config, *commands), strict=True):
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: "), result.stderr
        assert result.stdout == ""


# users


def test_users_add_prints_a_generated_password_once_and_it_signs_in(
    config: Path, local: EmbeddedDirectory
) -> None:
    result = bridge(
        config, "users", "add", "alice", "--display-name", "Alice Liddell",
        "--email", "alice@example.test", "--group", "staff", "--group", "admins",
    )
    assert result.returncode == 0, result.stderr
    passwords = GENERATED_PASSWORD.findall(result.stdout)
    assert len(passwords) == 1
    password = passwords[0]
    assert len(password) >= 16
    assert result.stdout.count(password) == 1
    assert re.match(r"^Created alice \([0-9a-f-]{36}\)$", result.stdout.splitlines()[0])
    auth = local.authenticate("alice", password)
    assert auth.outcome is Outcome.SUCCESS
    assert auth.identity is not None
    assert auth.identity.username == "alice"
    assert auth.identity.display_name == "Alice Liddell"
    assert auth.identity.email == "alice@example.test"
    assert auth.identity.groups == ("admins", "staff")
    assert outcome(local, "alice", password + "x") is Outcome.INVALID_CREDENTIALS


def test_users_add_password_stdin(config: Path, local: EmbeddedDirectory) -> None:
    password = "a password typed by an admin"
    result = bridge(config, "users", "add", "bob", "--password-stdin", input=password + "\n")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    assert "Password" not in result.stdout
    assert outcome(local, "bob", password) is Outcome.SUCCESS


def test_users_add_duplicate_fails_clearly(config: Path, local: EmbeddedDirectory) -> None:
    local.add_user("alice", "alice's first password")
    names = ("alice", "ALICE")
    results = bridge_many(config, *(("users", "add", name) for name in names))
    for name, result in zip(names, results, strict=True):
        assert result.returncode == 1
        assert result.stderr == f"error: user {name!r} already exists\n"
        assert "Password" not in result.stdout
    assert outcome(local, "alice", "alice's first password") is Outcome.SUCCESS


def test_users_add_invalid_username_fails(config: Path, local: EmbeddedDirectory) -> None:
    names = ("bad name;", ".leading-dot")
    results = bridge_many(config, *(("users", "add", name) for name in names))
    for name, result in zip(names, results, strict=True):
        assert result.returncode == 1, name
        assert result.stderr.startswith("error: a username is 1-64 letters, digits"), name
        assert "Password" not in result.stdout, name
    assert local.list_users() == []


def test_users_add_short_password_fails(config: Path, local: EmbeddedDirectory) -> None:
    short = bridge(config, "users", "add", "carol", "--password-stdin", input="elevenchars\n")
    assert short.returncode == 1
    assert short.stderr == "error: a password needs at least 12 characters\n"
    assert local.get_user("carol") is None
    twelve = bridge(config, "users", "add", "carol", "--password-stdin", input="twelve chars\n")
    assert twelve.returncode == 0, twelve.stderr
    assert outcome(local, "carol", "twelve chars") is Outcome.SUCCESS


def test_users_passwd_changes_the_password(config: Path, local: EmbeddedDirectory) -> None:
    local.add_user("alice", "the old password")
    result = bridge(
        config, "users", "passwd", "alice", "--password-stdin", input="the new password\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Password of alice changed\n"
    assert outcome(local, "alice", "the old password") is Outcome.INVALID_CREDENTIALS
    assert outcome(local, "alice", "the new password") is Outcome.SUCCESS


def test_users_passwd_of_unknown_user_fails(config: Path) -> None:
    result = bridge(config, "users", "passwd", "nobody", "--password-stdin", input="x" * 20)
    assert result.returncode == 1
    assert result.stderr == "error: no user 'nobody'\n"


def test_users_disable_and_enable(config: Path, local: EmbeddedDirectory) -> None:
    local.add_user("alice", "alice's password")
    disabled = bridge(config, "users", "disable", "alice")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout == "alice disabled\n"
    assert outcome(local, "alice", "alice's password") is Outcome.DISABLED
    assert outcome(local, "alice", "wrong password!") is Outcome.INVALID_CREDENTIALS
    enabled = bridge(config, "users", "enable", "alice")
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout == "alice enabled\n"
    assert outcome(local, "alice", "alice's password") is Outcome.SUCCESS


def test_users_list_shows_state_and_groups(config: Path, local: EmbeddedDirectory) -> None:
    local.add_user("alice", "alice's password", groups=("staff", "admins"))
    local.add_user("bob", "bob's password!")
    local.set_disabled("bob", True)
    result = bridge(config, "users", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [["alice", "active", "admins,staff"], ["bob", "disabled", "-"]]


def test_password_is_stored_only_as_an_argon2id_hash(
    config: Path, local: EmbeddedDirectory
) -> None:
    password = "Pl41n-Text-Password-Marker"
    result = bridge(config, "users", "add", "alice", "--password-stdin", input=password + "\n")
    assert result.returncode == 0, result.stderr
    user = local.get_user("alice")
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    stored = local.store.get_document(USER_KIND, "alice")
    assert stored is not None
    assert password not in json.dumps(stored.body)
    db = load_config(config).store.path
    files = sorted(db.parent.glob(db.name + "*"))  # bridge.db and any -wal / -shm
    assert db in files
    for file in files:
        data = file.read_bytes()
        assert password.encode() not in data, file
        assert password.encode("utf-16-le") not in data, file
    assert b"$argon2id$" in b"".join(file.read_bytes() for file in files)


# audit


@pytest.fixture
def audited(config: Path) -> Path:
    """A config whose store holds four sign-in events, one of them three hours old."""
    store = open_store(load_config(config).store)
    try:
        store.append_audit(AuditEvent(
            event="sign-in", outcome="success", time=datetime.now(UTC) - timedelta(hours=3),
            username="carol", source="local", client_ip="10.0.0.3",
        ))
        trail = AuditTrail(store, 180)
        assert trail.record(
            "sign-in", "success", username="alice", source="local", client_ip="127.0.0.1"
        )
        assert trail.record(
            "sign-in", "invalid_credentials", username="bob", source="local",
            client_ip="10.0.0.2",
        )
        assert trail.record(
            "sign-in", "invalid_credentials", username="alice", source="local",
            client_ip="127.0.0.1",
        )
    finally:
        store.close()
    return config


def audit_rows(stdout: str) -> list[tuple[str, str, str, str]]:
    """(event, outcome, username, client_ip) of each text line of `bridge audit`."""
    rows = []
    for line in stdout.splitlines():
        when, event, outcome, username, source, client_ip = line.split()
        datetime.fromisoformat(when)
        assert source == "local"
        rows.append((event, outcome, username, client_ip))
    return rows


def test_audit_lists_and_filters_events_newest_first(audited: Path) -> None:
    four_hours_ago = (datetime.now(UTC) - timedelta(hours=4)).isoformat()
    queries = {
        "all": (),
        "user": ("--user", "alice"),
        "outcome": ("--outcome", "invalid_credentials"),
        "since": ("--since", "1h"),
        "since_iso_limit": ("--since", four_hours_ago, "--limit", "2"),
    }
    runs = bridge_many(audited, *(("audit", *args) for args in queries.values()))
    results = dict(zip(queries, runs, strict=True))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr)
    alice_failed = ("sign-in", "invalid_credentials", "alice", "127.0.0.1")
    bob_failed = ("sign-in", "invalid_credentials", "bob", "10.0.0.2")
    alice_ok = ("sign-in", "success", "alice", "127.0.0.1")
    carol_ok = ("sign-in", "success", "carol", "10.0.0.3")
    assert audit_rows(results["all"].stdout) == [alice_failed, bob_failed, alice_ok, carol_ok]
    assert audit_rows(results["user"].stdout) == [alice_failed, alice_ok]
    assert audit_rows(results["outcome"].stdout) == [alice_failed, bob_failed]
    assert audit_rows(results["since"].stdout) == [alice_failed, bob_failed, alice_ok]
    assert audit_rows(results["since_iso_limit"].stdout) == [alice_failed, bob_failed]


def test_audit_json_lines(audited: Path) -> None:
    result = bridge(audited, "audit", "--json", "--user", "alice")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["event"], r["outcome"], r["username"]) for r in records] == [
        ("sign-in", "invalid_credentials", "alice"),
        ("sign-in", "success", "alice"),
    ]
    for record in records:
        assert record["source"] == "local"
        assert record["client_ip"] == "127.0.0.1"
        age = datetime.now(UTC) - datetime.fromisoformat(record["time"])
        assert timedelta(0) <= age < timedelta(minutes=5)
    assert datetime.fromisoformat(records[0]["time"]) >= datetime.fromisoformat(records[1]["time"])


def test_audit_bad_since_is_a_usage_error(audited: Path) -> None:
    result = bridge(audited, "audit", "--since", "last tuesday")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Usage:" in result.stderr
    assert "Invalid value for '--since'" in result.stderr
    assert "use an ISO time or a duration such as 30m, 12h, 7d" in result.stderr


def test_commands_share_the_config_file_format(config: Path) -> None:
    """Every command that takes --config rejects the same bad file with exit code 2."""
    data = yaml.safe_load(config.read_text())
    data["unknown_section"] = {}
    config.write_text(yaml.safe_dump(data))
    commands = [("users", "add", "x"), ("audit",)]
    for args, result in zip(commands, bridge_many(config, *commands), strict=True):
        assert result.returncode == 2, args
        assert result.stderr.splitlines()[1:] == ["  - unknown_section: unknown key"], args
