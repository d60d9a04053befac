"""`mender-upgrade run` as an operator sees it: rejecting its approval (with `mender-upgrade
approve --reject`) ends it with "stopped: …" on stderr and exit code 3, after the same report
`demo` prints; `history` then shows who stopped it and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.settings import PREFECT_API_URL

from mender_upgrade.sandbox import stack
from tests.flowrun import flow_settings
from tests.test_serve_shutdown import wait_for

pytestmark = pytest.mark.sandbox
CLI = Path(sys.executable).parent / "mender-upgrade"


def _paused_run(name: str) -> str | None:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    for run in runs:
        keys = (run.state.state_details.run_input_keyset or {}) if run.state else {}
        if run.state and run.state.type.value == "PAUSED" and "schema" in keys:
            return str(run.id)
    return None


def test_rejecting_the_approval_of_run_stops_it_with_exit_code_3(prefect_api, sandbox, tmp_path: Path) -> None:
    settings = flow_settings(sandbox, "2.7.2")
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    config = tmp_path / "upgrade.yaml"
    config.write_text(yaml.safe_dump(data))
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    run = subprocess.Popen([str(CLI), "run", "--config", str(config)], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = wait_for(lambda: run.poll() is None and _paused_run(f"{settings.host_id} 2.6.4→2.7.2")
                          or (run.poll() is not None and "exited"), 300, "the run to pause for approval")
        assert run_id != "exited", run.communicate()
        reject = subprocess.run([str(CLI), "approve", run_id, "--reject", "--comment", "not this week",
                                 "--approver", "dave"], env=env, capture_output=True, text=True, timeout=120)
        assert reject.returncode == 0, reject.stderr
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 3, (out, err)
    assert "stopped: approval `plan` rejected: not this week" in err and "Traceback" not in err
    text = " ".join(out.split())
    assert f"Mender upgrade on {settings.host_id}: rejected" in text and "rejected, typed name dave (unsigned): not this week" in text

    history = subprocess.run([str(CLI), "history", "--host", settings.host_id, "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    row, = json.loads(history.stdout)
    assert (row["id"], row["outcome"], row["from"], row["to"]) == (run_id, "rejected", "2.6.4", "2.7.2")
    assert row["approvals"] == [{"gate": "plan", "outcome": "rejected", "approver": "dave"}]
    assert stack.status()["version"] == "2.6.4"
