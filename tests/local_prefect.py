"""The tool's own local Prefect server (`mender_upgrade.flows.runner.ensure_local_server`: a real `prefect server
start` requiring its auth string) on a random 127.0.0.1 port, for tests that need no Docker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from mender_upgrade.flows.runner import ensure_local_server
from tests.ports import free_port


@contextmanager
def local_prefect_server(home: Path) -> Iterator[str]:
    """Its API URL while it runs; its whole process group is stopped afterwards."""
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_API_AUTH_STRING}):
        api = ensure_local_server(home, free_port(), log=lambda m: None)
    try:
        yield api
    finally:
        os.killpg(int((home / "server.pid").read_text()), signal.SIGTERM)
