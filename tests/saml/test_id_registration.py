"""XML IDs are registered only on the renewable xmlsec thread, never on a request thread.

libxml2 keeps every registered ID value in the string dictionary lxml gives each thread, for
the life of that thread (docs/benchmarks.md measures ~70 bytes per message); these tests pin
down where `xmlsec.tree.add_ids` runs and that the thread is renewed, also after a fork.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xmlsec
from lxml import etree

from bridge import keys
from bridge.frontends.saml import signing
from bridge.frontends.saml.responses import SAML, new_id
from bridge.frontends.saml.signing import IdRegistrationThread, SignatureError, Signer


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    directory: Path = tmp_path_factory.mktemp("keys")
    keys.generate(directory, development=True, rsa_bits=2048)
    return Signer(keys.KeyRing.load(directory).current("saml"))


@pytest.fixture
def add_ids_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    original = xmlsec.tree.add_ids

    def recording(node: Any, ids: Any) -> None:
        seen.append(threading.current_thread().name)
        original(node, ids)

    monkeypatch.setattr(xmlsec.tree, "add_ids", recording)
    yield seen


def _assertion() -> etree._Element:
    assertion = etree.Element(f"{{{SAML}}}Assertion", nsmap={"saml": SAML})
    assertion.set("ID", new_id())
    etree.SubElement(assertion, f"{{{SAML}}}Issuer").text = "https://idp.example.test"
    etree.SubElement(assertion, f"{{{SAML}}}Subject").text = "alice"
    return assertion


def test_signing_and_verifying_register_ids_off_the_calling_thread(
    signer: Signer, add_ids_threads: list[str]
) -> None:
    assertion = _assertion()
    signer.sign(assertion)
    reparsed = etree.fromstring(etree.tostring(assertion))
    certificate = signer.key.certificate_der_b64()
    signing.verify_enveloped(reparsed, [certificate])
    assert len(add_ids_threads) == 2
    assert threading.current_thread().name not in add_ids_threads
    assert all(name.startswith("bridge-xml-ids") for name in add_ids_threads)
    # The values copied back from the thread's copy are what a verifier checks.
    reparsed.find(f"{{{SAML}}}Subject").text = "mallory"
    with pytest.raises(SignatureError):
        signing.verify_enveloped(reparsed, [certificate])


def test_the_thread_is_renewed_and_retired_threads_end() -> None:
    runner = IdRegistrationThread(renew_after=2)
    threads = [runner.run(threading.current_thread) for _ in range(6)]
    assert threads[0] is threads[1]
    assert threads[2] is threads[3] and threads[2] is not threads[1]
    assert threads[4] is threads[5] and threads[4] is not threads[3]
    for retired in threads[:4]:
        retired.join(timeout=10)
        assert not retired.is_alive()
    assert threads[5].is_alive()


def _run_in_child(runner: IdRegistrationThread, results: Any) -> None:
    results.put(runner.run(lambda: 6 * 7))


def test_a_forked_worker_gets_its_own_thread() -> None:
    runner = IdRegistrationThread()
    assert runner.run(lambda: 1) == 1  # the parent's thread exists before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_run_in_child, args=(runner, results))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert results.get(timeout=5) == 42
