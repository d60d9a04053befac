"""A cancel from the UI of a run that `mender-upgrade serve` executes, while its containers are
down: Prefect's runner sends SIGTERM to the run's process and SIGKILL 30 s later, too soon for a
rollback; the run hands the server to its guardian (flows/guardian.py), ends Cancelled, and the
guardian rolls back and publishes the run's report again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from mender_upgrade.deployments.definitions import deployment_names
from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
from tests.faults.conftest import assert_invariants, run_backups, take_before, why_of
from tests.faults.test_downtime import _when_recreated
from tests.flowrun import flow_settings, report_of
from tests.test_serve_shutdown import wait_for

pytestmark = pytest.mark.sandbox


def _state(client, run_id) -> StateType | None:
    state = client.read_flow_run(run_id).state
    return state.type if state else None


def _serve(sandbox, settings, tmp_path: Path) -> subprocess.Popen:
    """`mender-upgrade serve` for `settings`' host, on the test's Prefect server."""
    data = settings.model_dump(mode="json")
    host_file = tmp_path / "host.toml"
    backup = {k: v for k, v in data["backup"].items() if v is not None} | {"secret_access_key": sandbox.s3.secret_key}
    host_file.write_text(f'host_id = "{settings.host_id}"\nintegration_dir = "{sandbox.integration}"\n[backup]\n'
                         + "".join(f"{k} = {json.dumps(v)}\n" for k, v in backup.items()))
    host_file.chmod(0o600)
    os.chown(host_file, 0, 0)
    config = tmp_path / "mender-upgrade.yaml"
    config.write_text(yaml.safe_dump({"host_id": settings.host_id} | {k: data[k] for k in (
        "target_version", "stability_window_s", "window", "gateway_smoke", "cleanup_apply")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            HOST_FILE_ENV: str(host_file)}  # this process's tool home: the run signs with the key the test reads
    cli = Path(sys.executable).parent / "mender-upgrade"
    with (tmp_path / "serve.log").open("wb") as out:
        return subprocess.Popen([str(cli), "serve", "--config", str(config)], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.fault(case="UI cancellation mid-cycle of a served run",
                   injected="Cancel through the Prefect API (what the UI's Cancel does) of a run `serve` executes, "
                            "once the new containers exist; the runner SIGTERMs the run's process, SIGKILL after 30 s")
def test_cancel_of_a_served_run_mid_cycle_rolls_back(prefect_api, sandbox, fault, tmp_path):
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    log = tmp_path / "serve.log"
    serve = _serve(sandbox, settings, tmp_path)
    try:
        with get_client(sync_client=True) as client:
            def registered():
                assert serve.poll() is None, log.read_text()
                try:
                    return client.read_deployment_by_name(f"upgrade-mender/{deployment_names(settings.host_id)[1]}")
                except ObjectNotFound:
                    return None
            deployment = wait_for(registered, 120, "serve to register its deployments")
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"poll_interval_s": 1})
            wait_for(lambda: _state(client, run.id) == StateType.PAUSED
                     and "schema" in (client.read_flow_run(run.id).state.state_details.run_input_keyset or {}),
                     300, "the served run to pause for approval")
            time.sleep(1)  # the form is saved right after the pause (Prefect #11905)
            cancelled_at: list[float] = []

            def cancel() -> None:
                client_ = get_client(sync_client=True)
                with client_:
                    client_.set_flow_run_state(run.id, Cancelling(message="cancelled from the UI"), force=True)
                cancelled_at.append(time.monotonic())
            watcher = _when_recreated(sandbox, cancel)
            resume_flow_run(run.id, run_input={"approve": True, "comment": "go", "approver": "carol"})
            final = wait_for(lambda: _state(client, run.id) in (StateType.COMPLETED, StateType.FAILED,
                                                                StateType.CRASHED, StateType.CANCELLED)
                             and _state(client, run.id), 600, "the served run to end")
            watcher.join(timeout=5)
            assert cancelled_at, "the run was never cancelled mid-cycle"
            assert final == StateType.CANCELLED, f"{final}\n{log.read_text()[-3000:]}"
            report = wait_for(lambda: (r := report_of(str(run.id))) and "guardian rolled back" in r and r,
                              600, f"the guardian's report\n{report_of(str(run.id))}")
            took = time.monotonic() - cancelled_at[0]
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait(10)
    fault.did = why_of(report) + f" (healthy again {took:.0f} s after the cancel)"
    assert_invariants(sandbox, before, run_backups(sandbox, settings), report,
                      ["**rolled back**", "cancelled", "guardian", "back on 2.6.4"], run=settings)
