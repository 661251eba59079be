"""The config file: schema, every problem at once with its path, secrets only through tags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    ConfigError,
    config_path,
    load_config,
)
from bridge.relying_parties import (
    OidcRelyingParty,
    SamlRelyingParty,
    WsFedRelyingParty,
    load_relying_party_files,
)
from tests.support import REPO

MINIMAL = "sources:\n  - id: local\n    type: embedded\n"
SECRET = "s3cr3t-" + "x" * 40  # long enough for secret_key


def write(directory: Path, text: str, name: str = "bridge.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path.resolve())
    return caught.value.problems


def paths_of(problems: list[str]) -> list[str]:
    """The `path` part of each `path: message` problem."""
    return [problem.split(": ", 1)[0] for problem in problems]


# A valid file


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "conf", MINIMAL))
    assert [(s.id, s.type, s.display_name) for s in config.sources] == [
        ("local", "embedded", "Local accounts")
    ]
    assert config.server.public_url == "http://localhost:8080"
    assert config.server.bind == "127.0.0.1:8080"
    assert config.server.workers is None
    assert config.store.type == "sqlite"
    assert config.secret_key is None
    assert config.logging.format == "json"
    assert config.audit.retention_days == 180
    assert config.source("local").id == "local"


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "bridge"
    write(
        conf,
        MINIMAL
        + "store: {type: sqlite, path: db/bridge.db}\n"
        + "keys: {dir: ../certs}\n"
        + "relying_parties_dir: rps\n"
        + "server: {tls_cert: tls/cert.pem, tls_key: /abs/key.pem}\n",
    )
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    # Given relative to the working directory, resolved against the file's own directory.
    config = load_config(Path("../../etc/bridge/bridge.yaml"))
    assert config.store.path == conf / "db" / "bridge.db"
    assert config.keys.dir == tmp_path / "etc" / "certs"
    assert config.relying_parties_dir == conf / "rps"
    assert config.server.tls_cert == conf / "tls" / "cert.pem"
    assert config.server.tls_key == Path("/abs/key.pem")


def test_default_paths_also_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "repo" / "config"
    path = write(conf, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    # config/bridge.yaml in the repository layout: data/ and certs/ sit beside config/.
    assert config.store.path == tmp_path / "repo" / "data" / "bridge.db"
    assert config.keys.dir == tmp_path / "repo" / "certs"
    assert config.relying_parties_dir == conf / "relying_parties"


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SECRET_KEY", SECRET)
    config = load_config(REPO / "config" / "bridge.example.yaml")
    assert config.server.public_url == "https://sso.example.com"
    assert config.secret_key is not None
    assert config.secret_key.get_secret_value() == SECRET


# Every problem at once


SEVERAL_PROBLEMS = """\
server:
  public_url: ftp://sso.example.com
  bind: localhost
  workers: 0
  threads: many
  colour: blue
logging:
  level: LOUD
store:
  type: sqlite
  busy_timeout_ms: 10
session:
  idle_minutes: 30
  flavour: mint
sources:
  - id: local
    type: embedded
  - id: local
    type: embedded
secret_key: "this plain text secret is long enough to pass the length check"
bogus: 1
"""


def test_several_problems_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, SEVERAL_PROBLEMS))
    expected = {
        "server.public_url": "must be an http(s) URL without query or fragment",
        "server.bind": "must be HOST:PORT, e.g. 0.0.0.0:8080",
        "server.workers": "Input should be greater than or equal to 1",
        "server.threads": "Input should be a valid integer, unable to parse string as an integer",
        "server.colour": "unknown key",
        "logging.level": "Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        "store.busy_timeout_ms": "Input should be greater than or equal to 50",
        "session.flavour": "unknown key",
        "sources[1].id": "source id 'local' is used twice",
        "secret_key": "secrets must be given with !env NAME or !envfile PATH, not as text",
        "bogus": "unknown key",
    }
    assert sorted(problems) == sorted(f"{path}: {message}" for path, message in expected.items())
    # The plain-text secret itself is never echoed back.
    assert "plain text secret" not in " ".join(problems)


def test_missing_sources_is_reported_alongside_other_problems(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "server:\n  workers: 100\nlogging:\n  format: xml\n"))
    assert sorted(problems) == [
        "logging.format: Input should be 'json' or 'text'",
        "server.workers: Input should be less than or equal to 64",
        "sources: Field required",
    ]


def test_unknown_key_inside_a_source_has_its_index(tmp_path: Path) -> None:
    text = "sources:\n  - {id: local, type: embedded}\n  - {id: other, type: embedded, x: 1}\n"
    assert problems_of(write(tmp_path, text)) == ["sources[1].x: unknown key"]


def test_empty_sources_list_is_a_problem(tmp_path: Path) -> None:
    assert paths_of(problems_of(write(tmp_path, "sources: []\n"))) == ["sources"]


def test_tls_cert_without_key_is_a_problem(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "server: {tls_cert: cert.pem}\n"))
    assert problems == ["server: tls_cert and tls_key must be given together"]


def test_config_error_message_names_the_file_and_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {workers: 0}\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path.resolve()}: ")
    for problem in caught.value.problems:
        assert problem in text
    assert len(caught.value.problems) == 3  # workers, bogus, sources


@pytest.mark.parametrize(
    "bind",
    ["8080", ":8080", "localhost:", "localhost:http", "localhost:0", "localhost:65536"],
)
def test_bad_bind_addresses(tmp_path: Path, bind: str) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + f"server: {{bind: '{bind}'}}\n"))
    assert problems == ["server.bind: must be HOST:PORT, e.g. 0.0.0.0:8080"]


@pytest.mark.parametrize(
    "url",
    ["sso.example.com", "ftp://sso.example.com", "https://sso.example.com/?x=1",
     "https://sso.example.com/#top", "https://sso example.com"],
)
def test_bad_public_urls(tmp_path: Path, url: str) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + f"server: {{public_url: '{url}'}}\n"))
    assert problems == ["server.public_url: must be an http(s) URL without query or fragment"]


def test_good_bind_and_public_url_are_kept(tmp_path: Path) -> None:
    text = MINIMAL + "server: {bind: '[::1]:8443', public_url: 'https://sso.example.com/idp/'}\n"
    config = load_config(write(tmp_path, text))
    assert config.server.bind == "[::1]:8443"
    assert config.server.public_url == "https://sso.example.com/idp"


# Secrets


def test_env_secret_is_used_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_SECRET", SECRET)
    config = load_config(write(tmp_path, MINIMAL + "secret_key: !env BRIDGE_TEST_SECRET\n"))
    assert config.secret_key is not None
    assert config.secret_key.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(config.secret_key), str(config.secret_key),
                 config.model_dump_json()):
        assert SECRET not in text
        assert "s3cr3t" not in text


def test_envfile_secret_is_read_relative_to_the_config(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text(SECRET + "\n")
    config = load_config(write(tmp_path, MINIMAL + "secret_key: !envfile secrets/key\n"))
    assert config.secret_key is not None
    assert config.secret_key.get_secret_value() == SECRET  # trailing newline dropped
    assert SECRET not in repr(config)


def test_short_env_secret_is_a_problem_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_SECRET", "tooshort-abc")
    path = write(tmp_path, MINIMAL + "secret_key: !env BRIDGE_TEST_SECRET\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["secret_key: must be at least 32 characters of random data"]
    assert "tooshort-abc" not in str(caught.value)


def test_unset_env_variable_is_a_problem_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_TEST_UNSET", raising=False)
    text = MINIMAL + "logging: {format: text}\nsecret_key: !env BRIDGE_TEST_UNSET\n"
    problems = problems_of(write(tmp_path, text))
    assert problems[0] == "line 5: environment variable BRIDGE_TEST_UNSET (for !env) is not set"
    assert problems[1:] == [
        "secret_key: secret !env BRIDGE_TEST_UNSET is unavailable (see the problem above)"
    ]


def test_missing_envfile_is_a_problem_with_its_line(tmp_path: Path) -> None:
    text = MINIMAL + "secret_key: !envfile secrets/nope\n"
    problems = problems_of(write(tmp_path, text))
    assert problems == [
        "line 4: cannot read !envfile secrets/nope: No such file or directory",
        "secret_key: secret !envfile secrets/nope is unavailable (see the problem above)",
    ]


def test_env_tag_needs_a_variable_name(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "secret_key: !env 'not a name'\n"))
    assert problems[0] == "line 4: !env needs a variable name, got 'not a name'"
    assert len(problems) == 2


def test_secret_problems_and_schema_problems_come_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRIDGE_TEST_UNSET", raising=False)
    text = "secret_key: !env BRIDGE_TEST_UNSET\nserver: {workers: 0}\n"
    problems = problems_of(write(tmp_path, text))
    assert "line 1: environment variable BRIDGE_TEST_UNSET (for !env) is not set" in problems
    assert "server.workers: Input should be greater than or equal to 1" in problems
    assert "sources: Field required" in problems
    assert len(problems) == 4


# Files that are not a mapping of sections


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = "sources:\n  - id: local\n    type: embedded\nserver:\n  bind: [unclosed\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1
    assert re.fullmatch(r"line 6, column 1: not valid YAML: .+", problems[0]), problems


def test_yaml_bad_indentation_has_line_and_column(tmp_path: Path) -> None:
    text = "server:\n  bind: 127.0.0.1:80\n   threads: 2\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1
    assert problems[0].startswith("line 3, column 11: not valid YAML: ")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert problems_of(write(tmp_path, text)) == ["the file is empty"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert problems_of(write(tmp_path, text)) == ["(top level): must be a mapping of sections"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"cannot read {path}: No such file or directory"]


# Which file


def test_config_path_explicit_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert config_path() == DEFAULT_CONFIG_PATH == Path("config/bridge.yaml")
    monkeypatch.setenv(CONFIG_ENV, "/etc/bridge/from-env.yaml")
    assert config_path() == Path("/etc/bridge/from-env.yaml")
    assert config_path("given.yaml") == Path("given.yaml")
    monkeypatch.setenv(CONFIG_ENV, "")
    assert config_path() == DEFAULT_CONFIG_PATH


def test_bridge_config_env_selects_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "sources:\n  - {id: from-env, type: embedded}\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.chdir(tmp_path.parent)
    assert [s.id for s in load_config().sources] == ["from-env"]


# Relying-party files


SAML_RP = """\
id: payroll
name: Payroll
protocol: saml
entity_id: https://payroll.example.com/saml
sources: [local]
"""
OIDC_RP = """\
id: wiki
name: Team wiki
protocol: oidc
client_id: wiki-client
redirect_uris: [https://wiki.example.com/callback]
"""
WSFED_RP = """\
id: m365
name: Microsoft 365
protocol: wsfed
realm: urn:federation:MicrosoftOnline
enabled: false
"""


def test_relying_party_files_of_each_protocol_load(tmp_path: Path) -> None:
    directory = tmp_path / "relying_parties"
    write(directory, SAML_RP, "payroll.yaml")
    write(directory, OIDC_RP, "wiki.yaml")
    write(directory, WSFED_RP, "m365.yaml")
    write(directory, "not: yaml rp", "notes.txt")  # only *.yaml files are read
    parties = {party.id: party for party in load_relying_party_files(directory)}
    assert sorted(parties) == ["m365", "payroll", "wiki"]
    saml, oidc, wsfed = parties["payroll"], parties["wiki"], parties["m365"]
    assert isinstance(saml, SamlRelyingParty)
    assert (saml.entity_id, saml.sources, saml.enabled) == (
        "https://payroll.example.com/saml", ("local",), True,
    )
    assert isinstance(oidc, OidcRelyingParty)
    assert (oidc.client_id, oidc.redirect_uris) == (
        "wiki-client", ("https://wiki.example.com/callback",),
    )
    assert isinstance(wsfed, WsFedRelyingParty)
    assert (wsfed.realm, wsfed.enabled) == ("urn:federation:MicrosoftOnline", False)


def test_missing_relying_party_directory_is_empty(tmp_path: Path) -> None:
    assert load_relying_party_files(tmp_path / "absent") == []


def test_relying_party_problems_name_their_files(tmp_path: Path) -> None:
    directory = tmp_path / "relying_parties"
    write(directory, SAML_RP + "colour: red\n", "a-payroll.yaml")
    write(directory, "id: cas-app\nname: CAS app\nprotocol: cas\n", "b-cas.yaml")
    write(directory, OIDC_RP, "c-wiki.yaml")
    write(directory, WSFED_RP.replace("id: m365", "id: wiki"), "d-dup.yaml")
    write(directory, "id: x\nname: X\nprotocol: oidc\n", "e-incomplete.yaml")
    write(directory, "", "f-empty.yaml")
    with pytest.raises(ConfigError) as caught:
        load_relying_party_files(directory)
    assert caught.value.source == str(directory)
    problems = caught.value.problems
    assert problems[0] == "a-payroll.yaml: colour: unknown key"
    assert problems[1].startswith("b-cas.yaml: ")
    assert "'cas'" in problems[1] and "'saml', 'oidc', 'wsfed'" in problems[1]
    assert problems[2:] == [
        f"d-dup.yaml: id: 'wiki' is also defined in {directory / 'c-wiki.yaml'}",
        "e-incomplete.yaml: client_id: Field required",
        "f-empty.yaml: the file is empty",
    ]


def test_relying_party_bad_id_and_yaml_error(tmp_path: Path) -> None:
    directory = tmp_path / "relying_parties"
    write(directory, SAML_RP.replace("id: payroll", "id: Pay Roll"), "a.yaml")
    write(directory, "id: [broken\n", "b.yaml")
    with pytest.raises(ConfigError) as caught:
        load_relying_party_files(directory)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("a.yaml: id: String should match pattern")
    assert re.fullmatch(r"b\.yaml: line \d+, column \d+: not valid YAML: .+", problems[1])


def test_repeated_key_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "sources:\n  - id: local\n    type: embedded\n"
        "server:\n  workers: 2\n  workers: 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["line 6: key 'workers' appears twice"]
