"""A secret typed into a deployment run's parameters (what the UI form would send) is refused and
blanked in the server's copy; on the session's Prefect test server, the run executed as a worker
would (`prefect flow-run execute` in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from mender_upgrade.flows.upgrade import upgrade_mender
from tests.flowrun import everything_recorded
from tests.test_host_policy_flow import host_file  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
TYPED = "typed-into-the-run-form-9f3a"


def _execute_as_a_worker(run_id: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "prefect", "flow-run", "execute", run_id], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def test_a_secret_in_a_deployment_runs_parameters_is_refused_and_blanked(prefect_api, host_file):  # noqa: F811
    deployment_id = upgrade_mender.to_deployment(name="secret-in-parameters").apply()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"settings": {
            "target_version": "2.7.2", "backup": {"secret_access_key": TYPED}}})
    done = _execute_as_a_worker(str(run.id))
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_failed(), (finished.state, done.stdout[-2000:], done.stderr[-2000:])
    assert "backup.secret_access_key: a secret typed into the run parameters is refused" in finished.state.message
    assert finished.parameters["settings"]["backup"]["secret_access_key"] == "**********"
    _, recorded = everything_recorded(str(run.id))
    assert "refused" in recorded and TYPED not in recorded
    assert TYPED not in done.stdout + done.stderr


def test_a_deployment_run_without_a_secret_passes_the_guard(prefect_api, host_file):  # noqa: F811
    """The control: the same run without the secret gets past the guard (and fails later, on the
    host file's integration dir, which does not exist here)."""
    deployment_id = upgrade_mender.to_deployment(name="no-secret-in-parameters").apply()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"settings": {"target_version": "2.7.2"}})
    _execute_as_a_worker(str(run.id))
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_failed()
    assert "secret" not in finished.state.message and "never-touched" in finished.state.message
