"""Shared fixtures: one sandbox per test session, brought up once and taken down at the end."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before anything imports prefect: its home (results, local DB) in a throw-away folder.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from tests.realfiles import real_upstream  # noqa: E402,F401 (the fixture, for every test folder)

BASE_VERSION = "2.6.4"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked `last` tear shared state down; they must run after everything else.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: runs after every other test (tears the sandbox down)")


@pytest.fixture(scope="session")
def _sandbox_session():
    from mender_upgrade.sandbox import stack

    sb = stack.up(BASE_VERSION)
    yield sb
    if not os.environ.get("KEEP_SANDBOX"):  # KEEP_SANDBOX=1: keep it up between local test runs
        stack.down()


@pytest.fixture
def sandbox(_sandbox_session):
    """The sandbox at Mender 2.6.4 on the generated fixture repository, healthy and seeded;
    brought back to that state first when a test before changed the version, marked it dirty
    or ran the real files' sandbox; removed when the session ends."""
    from mender_upgrade.sandbox import stack

    state = _sandbox_session.home.read_state()
    if state.get("dirty") or state.get("version") != BASE_VERSION or state.get("real_upstream"):
        return stack.up(BASE_VERSION)
    return stack.attach(_sandbox_session.home)


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server (subprocess, temp SQLite) for the whole session; never nested."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
