"""`mender-upgrade serve --config FILE` as a new user runs it: no PREFECT_API_URL, the S3 keys in
the file. It must register on the local server (127.0.0.1:4200, the one `run`, `demo` and the UI
use), keep the secret key out of the deployment's parameters, and a run of its manual deployment
must get the key from the host, pause for approval and complete the upgrade on the sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.definitions import deployment_names, s3_secret_block_name
from flows.cli.upgrade import demo_settings
from flows.runner import api_healthy
from sandbox import stack
from tests.flowrun import report_of
from tests.test_serve_shutdown import wait_for

pytestmark = pytest.mark.sandbox
LOCAL_API = "http://127.0.0.1:4200/api"


def _state(client, run_id) -> StateType | None:
    state = client.read_flow_run(run_id).state
    return state.type if state else None


def test_serve_registers_on_the_local_server_and_its_manual_run_completes(sandbox, tmp_path: Path) -> None:
    host = f"served-{uuid.uuid4().hex[:6]}"
    settings = demo_settings(sandbox, "2.7.2").model_dump(mode="json")
    settings["host_id"] = host
    settings["backup"]["target"] = f"s3://{sandbox.s3.bucket}/serve-{host}"
    settings["backup"]["secret_access_key"] = sandbox.s3.secret_key  # the file holds it; nothing else does
    config = tmp_path / "mender-upgrade.yaml"
    config.write_text(yaml.safe_dump(settings))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")
           and not k.startswith("AWS_")}
    env |= {"MENDER_UPGRADE_HOME": str(home), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    cli = Path(sys.executable).parent / "mender-upgrade"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([str(cli), "serve", "--config", str(config)], env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with temporary_settings({PREFECT_API_URL: LOCAL_API}):
            wait_for(lambda: api_healthy(LOCAL_API) or serve.poll() is not None,
                     120, "the local Prefect server")
            assert serve.poll() is None, log.read_text()
            with get_client(sync_client=True) as client:
                def registered():
                    assert serve.poll() is None, log.read_text()
                    _, manual, drill = deployment_names(host)
                    try:
                        return (client.read_deployment_by_name(f"upgrade-mender/{manual}"),
                                client.read_deployment_by_name(f"restore-drill/{drill}"))
                    except ObjectNotFound:  # not registered yet
                        return None
                deployment, drill = wait_for(registered, 120, "serve to register its deployments on 127.0.0.1:4200")
                assert drill.parameters["settings"]["host_id"] == host
                stored = deployment.parameters["settings"]["backup"]
                assert sandbox.s3.secret_key not in str(deployment.parameters)
                assert stored["secret_block"] == s3_secret_block_name(host)
                assert Secret.load(stored["secret_block"]).get() == sandbox.s3.secret_key

                run = client.create_flow_run_from_deployment(deployment.id)
                wait_for(lambda: _state(client, run.id) == StateType.PAUSED
                         and "schema" in (client.read_flow_run(run.id).state.state_details.run_input_keyset or {}),
                         300, "the served run to pause for approval")
                time.sleep(1)  # the form is saved right after the pause (Prefect #11905)
                resume_flow_run(run.id, run_input={"approve": True, "comment": "served", "approver": "carol"})
                final = wait_for(lambda: _state(client, run.id) in (StateType.COMPLETED, StateType.FAILED,
                                                                    StateType.CRASHED, StateType.CANCELLED)
                                 and _state(client, run.id), 600, "the served run to end")
                report = report_of(str(run.id))
                assert final == StateType.COMPLETED, f"{report}\n{log.read_text()[-3000:]}"
                assert "**completed**" in report and "approval `plan`: approved by carol" in report
                assert sandbox.s3.secret_key not in log.read_text()
        assert stack.status()["version"] == "2.7.2"
    finally:
        stack.mark_dirty(stack.attach())
        try:
            os.killpg(serve.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        serve.wait(10)
        pid_file = home / "prefect" / "server.pid"
        if pid_file.exists():  # serve started the local server: stop it
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
