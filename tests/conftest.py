"""Shared fixtures: a prepared config, an in-process app, and a live bridge under gunicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import LiveBridge, live_bridge, prepare, write_config

ALICE_PASSWORD = "correct horse battery staple"
USERS = {"alice": ALICE_PASSWORD, "bob": "bob's long password 1"}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A prepared config: keys generated, users alice and bob present."""
    path = write_config(tmp_path / "bridge")
    prepare(path, USERS)
    return path


@pytest.fixture
def app(config_path: Path) -> Iterator[Flask]:
    """The bridge app built in-process from the prepared config."""
    from bridge.app import create_app

    application = create_app(config_path=config_path)
    yield application
    application.extensions["bridge"].store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for the in-process app."""
    return app.test_client()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    """A bridge served by gunicorn (2 workers) for the tests of one module."""
    path = write_config(tmp_path_factory.mktemp("live") / "bridge")
    prepare(path, USERS)
    with live_bridge(path) as server:
        yield server
