"""`mender-upgrade serve --config FILE` as a new user runs it: no PREFECT_API_URL, the S3 keys in
the host file. It must register on the local server (127.0.0.1:4200, the one `run`, `demo` and the
UI use), keep what the host file owns (the secret key above all) out of the deployment's
parameters, and a run of its manual deployment must take them from the host file, pause for
approval and complete the upgrade on the sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from mender_upgrade.deployments.definitions import deployment_names
from mender_upgrade.flows.cli.upgrade import demo_settings
from mender_upgrade.flows.runner import api_healthy, local_auth_string
from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
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
    # The host file (root-owned, 0600) holds what protects the server, the S3 secret included...
    host_file = tmp_path / "host.toml"
    backup = {k: v for k, v in settings["backup"].items() if v is not None} | {
        "target": f"s3://{sandbox.s3.bucket}/serve-{host}", "secret_access_key": sandbox.s3.secret_key}
    host_file.write_text(f'host_id = "{host}"\nintegration_dir = "{sandbox.integration}"\n[backup]\n'
                         + "".join(f"{k} = {json.dumps(v)}\n" for k, v in backup.items()))
    host_file.chmod(0o600)
    os.chown(host_file, 0, 0)
    # ...the config file only what a run may choose.
    config = tmp_path / "mender-upgrade.yaml"
    config.write_text(yaml.safe_dump({"host_id": host} | {k: settings[k] for k in (
        "target_version", "stability_window_s", "window", "gateway_smoke")}))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")
           and not k.startswith("AWS_")}
    env |= {"MENDER_UPGRADE_HOME": str(home), "PREFECT_RUNNER_POLL_FREQUENCY": "1", HOST_FILE_ENV: str(host_file)}
    auth = local_auth_string(home / "prefect")
    cli = Path(sys.executable).parent / "mender-upgrade"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([str(cli), "serve", "--config", str(config)], env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # The local server requires the auth string the tool keeps in its home (made here first,
        # so the server `serve` starts uses the same one).
        with temporary_settings({PREFECT_API_URL: LOCAL_API, PREFECT_API_AUTH_STRING: auth}):
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
                assert drill.name.startswith(host) and "host_id" not in drill.parameters["settings"]  # host-owned
                # Nothing the host file owns is in the (API-readable, UI-editable) parameters.
                assert "backup" not in deployment.parameters["settings"]
                assert "integration_dir" not in deployment.parameters["settings"]
                assert sandbox.s3.secret_key not in str(deployment.parameters)

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
                assert "**completed**" in report and "approval `plan`: approved, typed name carol" in report
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
