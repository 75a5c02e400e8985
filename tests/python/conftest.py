"""pytest configuration for the Sluice real-client interop suite.

Run through tests/interop/run.sh, which starts a broker and sets SLUICE_BOOTSTRAP
(and SLUICE_ADMIN_ADDR). To run against a broker you started yourself:

    SLUICE_BOOTSTRAP=127.0.0.1:9092 .venv/bin/pytest tests/python
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import sluice_helpers as h  # noqa: E402


def pytest_configure(config):
    if not h.BOOTSTRAP:
        raise pytest.UsageError(
            "SLUICE_BOOTSTRAP is not set: start a broker (tests/interop/run.sh does) and "
            "set SLUICE_BOOTSTRAP=host:port")


def pytest_report_header(config):
    return f"sluice broker: {h.BOOTSTRAP} (admin {h.ADMIN_ADDR or 'n/a'})"


@pytest.fixture(scope="session", autouse=True)
def broker_reachable():
    host, port = h.BOOTSTRAP.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.exit(f"broker at {h.BOOTSTRAP} is not reachable: {exc}", returncode=3)


@pytest.fixture
def topic(request):
    """A fresh, unique topic name (not created) named after the test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")
    return h.unique_topic(name[:80])


@pytest.fixture(scope="session")
def cadmin():
    return h.confluent_admin()
