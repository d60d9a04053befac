"""One upgrade at a time per Mender host: a Prefect global concurrency limit held across pauses.

(A deployment's own concurrency slot is released while a run is paused, so it cannot keep a
second run out during an approval; a global limit with a lease renewed by the live process
can, and the server frees a crashed holder's slot when its lease expires.)

The lease only frees a slot where the server's repossessor service runs (not in the ephemeral
or test server), and the server keeps leases in memory: after a server restart a slot taken
before it stays taken for good. `release_stale_lock` is the operator's way out. A run killed
in its quiet period hands its lease to its guardian, which frees it once the server is back
(flows/lease.py).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.runtime import flow_run
from prefect.states import Crashed
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from mender_upgrade.flows.lease import LEASE_SECONDS, LeaseKeeper
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.run_record import FLOW_NAME

REPOSSESSOR_LOOP_SECONDS = 15  # the server's default `server.services.repossessor.loop_seconds`
POLL_S = 0.5  # how often a waiting run looks at a held lock


class UpgradeAlreadyRunning(UpgradeError):
    """Another upgrade run holds this host's lock."""


class LockHeldByLiveRun(UpgradeError):
    """An upgrade run that may still be alive could hold the lock; it is not freed."""


def lock_name(host: str) -> str:
    return "mender-upgrade-" + re.sub(r"[^a-z0-9-]", "-", host.lower())


def _ensure_lock(client: SyncPrefectClient, name: str) -> None:
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run created it meanwhile: that one is as good
            pass


def _take_slot(client: SyncPrefectClient, name: str) -> UUID | None:
    """One request for the slot: its lease id, or None when it is held (423 Locked)."""
    try:
        response = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", LEASE_SECONDS)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            return None
        raise
    granted = response.json()
    if not granted.get("limits"):  # `unlock` deletes and creates it anew: this was the moment between
        _ensure_lock(client, name)
        return _take_slot(client, name)
    return UUID(granted["lease_id"])


@contextmanager
def host_lock(host: str, wait_s: float) -> Iterator[LeaseKeeper]:
    """Hold `host`'s lock for the block; wait up to `wait_s` for a holder to let go. Yields the
    lease's keeper: the quiet period's guardian takes the lease over when this process cannot
    finish (`LeaseKeeper.handed_over`).

    `wait_s` bounds the wait for a *held* lock, never one request: each try is a single request
    left to finish however slow the API is. A client timeout would cancel a request the server
    may still grant (a slot taken by a lease nobody holds), and a slow answer would be reported
    as "another upgrade is running" when nothing is (both seen on a loaded test server)."""
    name = lock_name(host)
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        _ensure_lock(client, name)
        while (lease_id := _take_slot(client, name)) is None:
            if time.monotonic() >= deadline:
                raise UpgradeAlreadyRunning(
                    f"another upgrade of {host} is running (lock {name!r} held){_holders(client, host)}",
                    "wait for it to finish (a run killed mid-upgrade: its guardian frees the lock once the server "
                    "is back), or see `mender-upgrade history`; a lock whose holder died frees itself about "
                    f"{LEASE_SECONDS + REPOSSESSOR_LOOP_SECONDS} s later unless the Prefect server restarted since it "
                    f"was taken; then: `mender-upgrade unlock {host}`")
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0)))
    keeper = LeaseKeeper(lease_id)
    try:
        yield keeper
    finally:
        # A failed renewal never ends the run (mid container cycle only an UpgradeError rolls back);
        # the slot stays taken in the database meanwhile.
        keeper.end()


def _holders(client: SyncPrefectClient, host: str) -> str:
    """The other live upgrade runs that may hold `host`'s lock, for the refusal."""
    others = [run for run in live_runs(client, host) if run.id != str(flow_run.id or "")]
    return "; it may be held by " + ", ".join(run.describe() for run in others) if others else \
        "; no other RUNNING or PAUSED upgrade run may hold it: its holder died, or is no upgrade run"


@dataclass(frozen=True)
class LiveRun:
    """An upgrade-mender run that is RUNNING or PAUSED: it may hold a host's lock."""

    id: str
    name: str
    state: str
    host_id: str  # empty: its settings name no host (it locks its machine's hostname)

    def describe(self) -> str:
        return f"{self.name} ({self.id}, {self.state}, host {self.host_id or 'unnamed: its hostname'})"


@dataclass(frozen=True)
class LockStatus:
    host: str
    name: str
    exists: bool
    active_slots: int
    live_runs: list[LiveRun] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return self.exists and self.active_slots > 0


def _host_id(run: FlowRun) -> str:
    settings = (run.parameters or {}).get("settings")
    return str(settings.get("host_id") or "") if isinstance(settings, dict) else ""


def live_runs(client: SyncPrefectClient, host: str) -> list[LiveRun]:
    """RUNNING or PAUSED upgrade-mender runs that may lock `host`: those whose host_id has the
    same lock, and those without a host_id (their host is a machine name we cannot see)."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PAUSED]))))
    return [LiveRun(str(run.id), run.name, (run.state.name if run.state else None) or "?", _host_id(run)) for run in runs
            if not _host_id(run) or lock_name(_host_id(run)) == lock_name(host)]


def lock_status(host: str) -> LockStatus:
    """Whether `host`'s lock exists and holds a slot, and which upgrade runs may hold it."""
    name = lock_name(host)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return LockStatus(host, name, exists=False, active_slots=0)
        return LockStatus(host, name, exists=True, active_slots=limit.active_slots,
                          live_runs=live_runs(client, host))


def release_stale_lock(host: str, force: bool = False) -> LockStatus:
    """Free `host`'s lock slot left by a dead holder; return the status found before.

    Refuses (LockHeldByLiveRun) while an upgrade run that may hold it is RUNNING or PAUSED,
    unless `force`. A killed process leaves its run RUNNING: check it is gone, then force.

    The limit is deleted and created anew rather than its active_slots set to 0: the dead
    holder's lease still exists on the server (no API revokes it) and names the limit's id; when
    it expires, or a forced-out holder releases it, it decrements that id's slots. Against a
    new id that is a no-op; against the old one it would free the next run's slot too."""
    status = lock_status(host)
    if not status.held:
        return status
    if status.live_runs and not force:
        listed = "\n  ".join(run.describe() for run in status.live_runs)
        raise LockHeldByLiveRun(
            f"{status.name} is held and these upgrade runs may hold it:\n  {listed}",
            "let them finish, or answer their approval; if their process is gone (killed, the machine "
            "restarted) the run stays RUNNING: check (ps, the Prefect UI), then "
            f"`mender-upgrade unlock {host} --force`")
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(status.name)
        except ObjectNotFound:  # someone freed it meanwhile
            pass
        _ensure_lock(client, status.name)
        for run in status.live_runs:  # forced: the operator says their processes are gone
            # The history must not show a dead run as still running: say what became of it.
            client.set_flow_run_state(UUID(run.id), Crashed(message=(
                f"its process was gone; the lock of {host} was freed by `mender-upgrade unlock --force`. "
                "Check the server with `./run ps` and the backup target before upgrading again")), force=True)
    return status
