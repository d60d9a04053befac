"""Shared fixtures: one sandbox per test session, brought up once and taken down at the end."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked `last` tear shared state down; they must run after everything else.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: runs after every other test (tears the sandbox down)")


@pytest.fixture(scope="session")
def sandbox():
    """The sandbox at Mender 2.6.4, healthy and seeded; removed when the session ends."""
    from sandbox import stack

    sb = stack.up("2.6.4")
    yield sb
    stack.down()
