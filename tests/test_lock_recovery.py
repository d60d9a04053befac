"""A crashed run's host lock, on the session's Prefect test server.

The test server runs no lease repossessor, so a SIGKILLed holder's slot stays taken there for
good (as on any server after a restart): only `release_stale_lock` frees it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import sys
import uuid
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Paused, Running
from typer.testing import CliRunner

from mender_upgrade.flows.cli import app
from mender_upgrade.flows.lock import LockHeldByLiveRun, UpgradeAlreadyRunning, host_lock, lock_status, release_stale_lock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys
from mender_upgrade.flows.lock import host_lock
with host_lock(sys.argv[1], 5):
    print("acquired", flush=True)
    sys.stdin.readline()  # holds the lock until told to go (or killed)
"""


@flow(name="upgrade-mender", persist_result=False)
def upgrade_mender_stand_in(settings: dict) -> None:
    """Only its name and parameters matter: runs are created in a state, never executed."""


def new_host() -> str:
    return f"prod-{uuid.uuid4().hex[:8]}"  # the test server is shared: a host per test


def start_holder(host: str) -> subprocess.Popen[str]:
    """Another process holding `host`'s lock (from another Python, as a real run would)."""
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, host], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if holder.stdout.readline().strip() != "acquired":
        holder.kill()
        pytest.fail("the holder process did not get the lock")
    return holder


def hold_and_kill(host: str) -> None:
    """A process takes `host`'s lock and is SIGKILLed while holding it (no release, no cleanup)."""
    holder = start_holder(host)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()


def test_a_killed_holders_slot_stays_taken_until_released(prefect_api) -> None:
    host = new_host()
    hold_and_kill(host)
    with pytest.raises(UpgradeAlreadyRunning, match=f"unlock {host}"), host_lock(host, wait_s=1):
        pass
    assert lock_status(host).held and lock_status(host).live_runs == []

    assert release_stale_lock(host).held  # the status it found
    assert not lock_status(host).held
    with host_lock(host, wait_s=1), pytest.raises(UpgradeAlreadyRunning), host_lock(host, wait_s=1):
        pass  # the recreated lock still keeps a second run out
    assert not lock_status(host).held


def test_nothing_to_free_is_said_and_changes_nothing(prefect_api) -> None:
    host = new_host()
    assert not release_stale_lock(host).exists
    result = CliRunner().invoke(app, ["unlock", host])
    assert result.exit_code == 0 and "no lock" in result.output
    with host_lock(host, wait_s=1):
        pass
    result = CliRunner().invoke(app, ["unlock", host])
    assert result.exit_code == 0 and "holds no slot" in result.output


def test_a_running_or_paused_upgrade_of_the_host_blocks_unlock_unless_forced(prefect_api) -> None:
    host = new_host()
    hold_and_kill(host)
    with get_client(sync_client=True) as client:
        mine = client.create_flow_run(upgrade_mender_stand_in, parameters={"settings": {"host_id": host}},
                                      state=Paused())
        other = client.create_flow_run(upgrade_mender_stand_in, parameters={"settings": {"host_id": new_host()}},
                                       state=Running())
        try:
            with pytest.raises(LockHeldByLiveRun) as err:
                release_stale_lock(host)
            assert str(mine.id) in err.value.message and str(other.id) not in err.value.message
            assert f"unlock {host} --force" in err.value.hint

            result = CliRunner().invoke(app, ["unlock", host])
            assert result.exit_code == 3 and str(mine.id) in result.output and lock_status(host).held

            result = CliRunner().invoke(app, ["unlock", host, "--force"])
            assert result.exit_code == 0 and "freed" in result.output and "forced past 1" in result.output
            assert not lock_status(host).held
        finally:
            for run in (mine, other):
                client.set_flow_run_state(run.id, Cancelled(), force=True)


def test_a_live_run_without_host_id_may_hold_any_hosts_lock(prefect_api) -> None:
    host = new_host()
    hold_and_kill(host)
    with get_client(sync_client=True) as client:
        unnamed = client.create_flow_run(upgrade_mender_stand_in, parameters={"settings": {"host_id": ""}},
                                         state=Running())
        try:
            with pytest.raises(LockHeldByLiveRun, match="unnamed: its hostname"):
                release_stale_lock(host)
        finally:
            client.set_flow_run_state(unnamed.id, Cancelled(), force=True)
    release_stale_lock(host)
    assert not lock_status(host).held


def test_a_holder_forced_out_that_finishes_later_does_not_free_the_next_runs_slot(prefect_api) -> None:
    host = new_host()
    holder = start_holder(host)
    try:
        release_stale_lock(host)  # it is no flow run, so nothing looks alive: as with --force
        with host_lock(host, wait_s=30):  # free: only a loaded machine makes this slow
            holder.communicate("go\n", timeout=60)  # leaves its `with`: releases its (old) lease
            assert holder.returncode == 0
            assert lock_status(host).active_slots == 1
            with pytest.raises(UpgradeAlreadyRunning), host_lock(host, wait_s=1):
                pass
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_slow_api_is_not_taken_for_a_held_lock(prefect_api) -> None:
    """The server grants a free lock's slot 3 s after the request, the run waits at most 1 s for
    a held lock: the run gets the lock (it was free), and no slot stays taken after it."""
    from urllib.parse import urlsplit

    from prefect.settings import temporary_settings

    from tests.sandbox.faultproxy import FaultProxy

    host = new_host()
    api = urlsplit(PREFECT_API_URL.value())
    proxy = FaultProxy(api.port, on_request=([b"/increment-with-lease"], lambda: time.sleep(3)))
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"{proxy.url}{api.path}"}):
            started = time.monotonic()
            with host_lock(host, wait_s=1):
                took = time.monotonic() - started
                assert lock_status(host).active_slots == 1
        assert proxy.on_request is None, "the lock request never went through the slow proxy"
        assert took >= 3, took
    finally:
        proxy.close()
    assert lock_status(host).active_slots == 0
