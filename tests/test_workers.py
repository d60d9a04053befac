"""prefect.yaml as the README's "Workers" section uses it, on a clean host: a real `prefect
server start` (random 127.0.0.1 port, analytics off), the host's pool `mender-<host>`, the real
`prefect --no-prompt deploy --all`, and a real `prefect worker start` that runs the manual
deployment (as written: no integration clone at /opt/mender/integration) to a clean refusal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from mender_upgrade.deployments.definitions import deployment_names
from mender_upgrade.flows.runner import api_healthy
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
from tests.flowrun import report_of
from tests.ports import free_port
from tests.test_serve_shutdown import wait_for

REPO = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"


class Host:
    """A clean Prefect home, the environment the README tells a worker host to have, and the
    processes started for it (stopped at the end)."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"mender{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
            "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": self.api, "MENDER_HOST": self.name,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
            HOST_FILE_ENV: str(tmp / "host.toml")}
        # The host file decides what runs started through the API may touch (root-owned, 0600).
        host_file = tmp / "host.toml"
        host_file.write_text(f'host_id = "{self.name}"\nintegration_dir = "/opt/mender/integration"\n'
                             f'[backup]\ntarget = "file://{tmp}/backups"\n')
        host_file.chmod(0o600)
        os.chown(host_file, 0, 0)
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, *args: str, cwd: Path) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("wb") as out:
            self.processes.append(subprocess.Popen([str(PREFECT), *args], cwd=cwd, env=self.env, stdout=out,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True))
        return self.processes[-1]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def run(self, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([str(PREFECT), *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=300)

    def stop(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    server = h.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(h.port),
                     "--analytics-off", cwd=tmp_path)
    try:
        wait_for(lambda: api_healthy(h.api) or server.poll() is not None, 120, "prefect server start")
        assert server.poll() is None, h.log("server")
        yield h
    finally:
        h.stop()


def test_prefect_yaml_deploys_and_a_worker_runs_the_manual_deployment_to_a_clean_refusal(host: Host) -> None:
    pool = f"mender-{host.name}"
    created = host.run("work-pool", "create", pool, "--type", "process",
                       "--base-job-template", str(REPO / "deployments" / "process_pool_template.json"))
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = host.run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    worker_dir = host.tmp / "worker"  # not the checkout: the flows come from the installed package
    worker_dir.mkdir()
    host.start("worker", "worker", "start", "--pool", pool, "--type", "process", cwd=worker_dir)
    with temporary_settings({PREFECT_API_URL: host.api}), get_client(sync_client=True) as client:
        window, manual, drill = deployment_names(host.name)  # the names `serve` gives them
        found = {d.name: d for d in client.read_deployments()}
        assert {window, manual, drill} <= set(found), sorted(found)
        assert {found[n].work_pool_name for n in (window, manual, drill)} == {pool}
        assert found[manual].parameters["settings"]["host_id"] == host.name
        assert found[drill].entrypoint == "mender_upgrade.flows.drill:restore_drill_flow"

        run = client.create_flow_run_from_deployment(found[manual].id)

        def ended():
            state = client.read_flow_run(run.id).state
            return state if state and state.is_final() else None
        state = wait_for(ended, 240, f"the worker to run it (worker log: {host.tmp / 'worker.log'})")
        assert state.type == StateType.FAILED, f"{state.type}: {state.message}\n{host.log('worker')[-3000:]}"
        assert "/opt/mender/integration is not a git clone" in state.message
        assert "settings.integration_dir" in state.message and "--integration" not in state.message
        with temporary_settings({PREFECT_API_URL: host.api}):
            report = report_of(str(run.id))
        assert "**failed**" in report and "settings.integration_dir" in report
        assert client.read_flow_run(run.id).name == f"{host.name} ?→newest"
