"""Domain controllers that refuse, hang (SIGSTOP), stop and come back: checklist L05 and R01."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ldap.conftest import (
    ad_source,
    audit_outcomes,
    cell,
    error_text,
    ldapsearch,
    openldap_source,
    running,
    write_ldap_config,
)
from tests.ldap.directories import SAMBA_BASE, SambaDC, Slapd, TestCA, free_port
from tests.support import LiveBridge, browser_client, live_bridge, sign_in

TIMEOUTS = {"connect_timeout_seconds": 1, "receive_timeout_seconds": 3}
UNAVAILABLE = "Sign-in is temporarily unavailable. Please try again shortly."


@pytest.fixture(scope="module")
def spare(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd,
          test_ca: TestCA) -> Iterator[Slapd]:
    """A second slapd holding the same users and passwords as the session's one."""
    server = Slapd(tmp_path_factory.mktemp("spare"), test_ca, users=slapd.users,
                   service_password=slapd.service_password)
    with running(server):
        yield server


def _sign_in(live: LiveBridge, username: str, password: str) -> requests.Response:
    return sign_in(browser_client(), live.url, username, password, path="/login")


def _bad_password_count(samba: SambaDC, test_ca: TestCA, sam: str) -> int:
    values = ldapsearch(samba.url, test_ca.ca_file, samba.service_dn(),
                        samba.users["svc-bridge"].password, SAMBA_BASE,
                        f"(sAMAccountName={sam})", "badPwdCount")
    return int(values.get("badpwdcount", ["0"])[0])


def _bridge(tmp: Path, source: dict, password: str):  # noqa: ANN202 - a context manager
    return live_bridge(write_ldap_config(tmp / "bridge", source, password), workers=1)


def test_first_dc_refusing_connections_fails_over(
    tmp_path: Path, samba: SambaDC, test_ca: TestCA
) -> None:
    source = ad_source(samba, test_ca.ca_file, servers=[
        f"ldaps://127.0.0.1:{free_port()}", samba.url], **TIMEOUTS)
    with _bridge(tmp_path, source, samba.users["svc-bridge"].password) as live:
        for _ in range(3):
            page = _sign_in(live, "fran", samba.users["fran"].password)
            assert page.status_code == 200 and cell(page.text, "Username") == "fran"
        assert [o for u, o in audit_outcomes(live)] == ["success"] * 3
    assert _bad_password_count(samba, test_ca, "fran") == 0


def test_first_dc_hanging_fails_over_within_the_timeout(
    tmp_path: Path, samba: SambaDC, spare: Slapd, test_ca: TestCA
) -> None:
    # A stopped process still completes TCP handshakes (the kernel does), then never answers:
    # the worst kind of dead DC.
    source = ad_source(samba, test_ca.ca_file, servers=[spare.url, samba.url], **TIMEOUTS)
    with _bridge(tmp_path, source, samba.users["svc-bridge"].password) as live:
        os.killpg(spare.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = _sign_in(live, "fran", samba.users["fran"].password)
            first_seconds = time.monotonic() - started
            assert first.status_code == 200 and cell(first.text, "Username") == "fran"
            # Bounded by the configured timeouts (3 s receive) plus generous slack.
            assert first_seconds < 3 + 1 + 4
            # The breaker now routes around the hung DC: no second timeout.
            started = time.monotonic()
            second = _sign_in(live, "fran", samba.users["fran"].password)
            assert second.status_code == 200
            assert time.monotonic() - started < 3
        finally:
            os.killpg(spare.process.pid, signal.SIGCONT)
        assert {o for u, o in audit_outcomes(live)} == {"success"}
    assert _bad_password_count(samba, test_ca, "fran") == 0


def test_dc_stopped_and_restarted_mid_run_is_used_again(
    tmp_path: Path, slapd: Slapd, spare: Slapd, test_ca: TestCA
) -> None:
    source = openldap_source(spare, test_ca.ca_file, servers=[spare.url, slapd.url],
                             circuit_breaker={"failures": 1, "open_seconds": 1}, **TIMEOUTS)
    alice = slapd.users["alice"].password
    with _bridge(tmp_path, source, slapd.service_password) as live:
        assert _sign_in(live, "alice", alice).status_code == 200  # pooled connections to spare
        spare.stop()
        assert _sign_in(live, "alice", alice).status_code == 200  # served by the other DC
        spare.start()
        slapd.stop()
        try:
            # Only the restarted DC is up now; it is taken back once its breaker has rested
            # (1 s), without restarting the bridge. Poll with a bounded deadline.
            deadline = time.monotonic() + 20
            while True:
                response = _sign_in(live, "alice", alice)
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                assert response.status_code == 503 and error_text(response) == UNAVAILABLE
                time.sleep(0.2)
            assert response.status_code == 200
            assert cell(response.text, "Username") == "alice"
        finally:
            slapd.start()
        outcomes = {o for u, o in audit_outcomes(live)}
        assert outcomes <= {"success", "source_unavailable"}


def test_all_dcs_down_is_unavailable_not_a_bad_password(
    tmp_path: Path, samba: SambaDC, test_ca: TestCA
) -> None:
    source = ad_source(samba, test_ca.ca_file, servers=[
        f"ldaps://127.0.0.1:{free_port()}", f"ldaps://127.0.0.1:{free_port()}"], **TIMEOUTS)
    with _bridge(tmp_path, source, samba.users["svc-bridge"].password) as live:
        response = _sign_in(live, "fran", samba.users["fran"].password)
        assert response.status_code == 503
        assert error_text(response) == UNAVAILABLE
        assert audit_outcomes(live) == [("fran", "source_unavailable")]
        ready = requests.get(live.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["source:ad"].startswith("unavailable")


def test_samba_restarted_mid_run_without_restarting_the_bridge(
    ad_bridge: LiveBridge, samba: SambaDC
) -> None:
    password = samba.users["fran"].password
    assert _sign_in(ad_bridge, "fran", password).status_code == 200
    samba.stop()
    try:
        down = _sign_in(ad_bridge, "fran", password)
        assert down.status_code == 503 and error_text(down) == UNAVAILABLE
    finally:
        samba.start()
    # Pooled connections died with the DC; the next sign-in opens fresh ones.
    back = _sign_in(ad_bridge, "fran", password)
    assert back.status_code == 200 and cell(back.text, "Username") == "fran"
