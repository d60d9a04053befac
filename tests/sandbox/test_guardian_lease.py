"""A run killed in its quiet period: its guardian keeps the host lock while it puts the server
back, then frees it, on the run's Prefect API even when that API was only the run's temporary
settings (the CLI's local server), never its environment."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_API_URL
from prefect.states import Running

from mender_upgrade.flows.lease import LeaseKeeper, release_lease
from mender_upgrade.flows.lock import host_lock, lock_status
from tests.flowrun import flow_settings

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
# The run's side, in a process of its own: the lock, then the guardian, then it waits to be killed.
RUN_SIDE = """
import json, sys
from prefect.settings import PREFECT_API_URL, temporary_settings
from mender_upgrade.flows.guardian import QuietGuard
from mender_upgrade.flows.lock import host_lock
from mender_upgrade.flows.report import RunReport
from mender_upgrade.tasks.settings import load_settings
settings = load_settings(json.loads(sys.stdin.readline()))
with temporary_settings(updates={PREFECT_API_URL: sys.argv[1]}):
    with host_lock(settings.host_id, 5) as lease:
        guard = QuietGuard(settings, RunReport(host=settings.host_id, run_id=sys.argv[2]), "2.6.4", lease)
        print("guarded", flush=True)
        sys.stdin.readline()
"""


@flow(name="upgrade-mender", persist_result=False)
def upgrade_mender_stand_in(settings: dict) -> None:
    """Only its name and parameters matter: the run is created in a state, never executed."""


def _guardian_reports(run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return [a.data for a in arts if "guardian undid it" in str(a.data)]


def test_a_killed_runs_guardian_frees_the_host_lock_once_the_server_is_back(prefect_api, sandbox):
    settings = flow_settings(sandbox, "2.7.2")
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    with get_client(sync_client=True) as client:
        run_id = client.create_flow_run(upgrade_mender_stand_in, parameters={"settings": {"host_id": settings.host_id}},
                                        state=Running()).id
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # the API reaches it only in-process
    run = subprocess.Popen([sys.executable, "-c", RUN_SIDE, PREFECT_API_URL.value(), str(run_id)], cwd=ROOT, env=env,
                           text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        run.stdin.write(json.dumps(data) + "\n")
        run.stdin.flush()
        assert run.stdout.readline().strip() == "guarded"
        assert lock_status(settings.host_id).active_slots == 1
        os.killpg(run.pid, signal.SIGKILL)  # the run dies in its quiet period: no release, no hand-over
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 120
    while not (reports := _guardian_reports(run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reports, "the guardian published no report on the run's API"
    assert "every service still running" in reports[0]
    while lock_status(settings.host_id).held and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not lock_status(settings.host_id).held, "the guardian did not free the host lock"
    with host_lock(settings.host_id, wait_s=1):  # the next run needs no `unlock`
        pass


def test_the_keeper_renews_a_live_lease_and_says_when_it_cannot(prefect_api, caplog):
    caplog.set_level(logging.WARNING, logger="mender_upgrade.lease")
    host = f"lease-{os.getpid()}-{time.monotonic_ns()}"
    with host_lock(host, wait_s=1) as lease:
        renewing = LeaseKeeper(lease.lease_id, every_s=0.2)
        time.sleep(1)
        renewing.handed_over = True  # not its own lease to release
        renewing.end()
        assert not [r for r in caplog.records if "could not renew" in r.getMessage()]
        assert release_lease(lease.lease_id)
        gone = LeaseKeeper(lease.lease_id, every_s=0.2)  # a released lease: the server refuses its renewal
        time.sleep(1)
        gone.handed_over = True
        gone.end()
        assert [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert not lock_status(host).held
