"""One upgrade at a time per Mender host: a Prefect global concurrency limit held across pauses.

(A deployment's own concurrency slot is released while a run is paused, so it cannot keep a
second run out during an approval; a global limit with a lease renewed by the live process
can, and the server frees a crashed holder's slot when its lease expires.)
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from tasks.errors import UpgradeError

LEASE_SECONDS = 60


class UpgradeAlreadyRunning(UpgradeError):
    """Another upgrade run holds this host's lock."""


def lock_name(host: str) -> str:
    return "mender-upgrade-" + re.sub(r"[^a-z0-9-]", "-", host.lower())


def ensure_lock(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def host_lock(host: str, wait_s: float) -> Iterator[str]:
    name = lock_name(host)
    ensure_lock(name)
    try:
        with concurrency(name, occupy=1, timeout_seconds=max(wait_s, 0.1), strict=True,
                         lease_duration=LEASE_SECONDS):
            yield name
    except TimeoutError as exc:
        raise UpgradeAlreadyRunning(f"another upgrade of {host} is running (lock {name!r} held)",
                                    "wait for it to finish, or see `mender-upgrade history`; a crashed "
                                    f"run's lock frees itself within {LEASE_SECONDS} s") from exc
