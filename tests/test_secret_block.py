"""The S3 secret key from a Prefect Secret block named in the host file, read by the run from the
authenticated API: the tool's own local server (auth string, random port), the sandbox's SeaweedFS
S3 started alone on random ports (no Docker, no fixed port), and a deployment run of the restore
drill executed as a worker does (`prefect flow-run execute` in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from mender_upgrade.flows.drill import restore_drill_flow
from mender_upgrade.flows.runner import local_auth_string
from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.s3 import WEED_PORTS, S3Endpoint, start_s3, stop_s3
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
from mender_upgrade.tasks.settings import ConfigInvalid, load_settings
from tests.flowrun import everything_recorded
from mender_upgrade.sandbox.processes import port_open
from tests.local_prefect import free_port, local_prefect_server

REPO = Path(__file__).resolve().parents[1]
BLOCK = "mender-backup-s3"


@dataclass(frozen=True)
class Setup:
    api: str
    auth: str
    s3: S3Endpoint
    home: Path


def _free_port_pair() -> int:
    """A free port whose +10000 is free too (SeaweedFS opens gRPC there)."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and not port_open(port + 10000):
            return port


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    sandbox_home = SandboxHome(tmp_path_factory.mktemp("s3-home"))
    s3 = start_s3(sandbox_home, free_port(), {name: _free_port_pair() for name in WEED_PORTS})
    try:
        home = tmp_path_factory.mktemp("tool-home")
        with local_prefect_server(home / "prefect") as api:
            auth = local_auth_string(home / "prefect")
            with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}):
                yield Setup(api, auth, s3, home)
    finally:
        stop_s3(sandbox_home)


def _host_file(tmp_path: Path, s3: S3Endpoint, block: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(f'host_id = "block-host"\nintegration_dir = "{tmp_path / "never-touched"}"\n'
                    f'[backup]\ntarget = "s3://{s3.bucket}/secret-block"\nendpoint_url = "{s3.url}"\n'
                    f'access_key_id = "{s3.access_key}"\nsecret_block = "{block}"\n')
    path.chmod(0o644)
    os.chown(path, 0, 0)
    return path


def _drill_run_as_a_worker(setup: Setup, host_file: Path, deployment: str):
    deployment_id = restore_drill_flow.to_deployment(name=deployment).apply()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"settings": {}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))} | {
        "PREFECT_API_URL": setup.api, "PREFECT_API_AUTH_STRING": setup.auth, HOST_FILE_ENV: str(host_file),
        "PREFECT_HOME": str(setup.home / "worker"), "MENDER_UPGRADE_HOME": str(setup.home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    done = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run.id), done


def test_a_served_run_takes_the_s3_secret_from_the_block_the_host_file_names(setup: Setup, tmp_path):
    Secret(value=setup.s3.secret_key).save(BLOCK, overwrite=True)
    run, done = _drill_run_as_a_worker(setup, _host_file(tmp_path, setup.s3, BLOCK), "drill-secret-block")
    # S3 accepted the block's key: the drill listed the (empty) target and found no backup there.
    assert run.state.is_failed(), (run.state, done.stderr[-2000:])
    assert f"no verified backup in s3://{setup.s3.bucket}/secret-block/block-host" in run.state.message
    _, recorded = everything_recorded(str(run.id))
    assert setup.s3.secret_key not in recorded + done.stdout + done.stderr
    assert "secret_access_key" not in str(run.parameters)


def test_a_wrong_key_in_the_block_is_refused_by_s3(setup: Setup, tmp_path):
    """The control: the same run with a block holding another key does not get in."""
    Secret(value="not-the-s3-secret-key").save("wrong-s3-key", overwrite=True)
    run, done = _drill_run_as_a_worker(setup, _host_file(tmp_path, setup.s3, "wrong-s3-key"), "drill-wrong-block")
    assert run.state.is_failed(), (run.state, done.stderr[-2000:])
    assert "no verified backup" not in run.state.message
    assert "SignatureDoesNotMatch" in run.state.message or "AccessDenied" in run.state.message, run.state.message


def test_a_missing_block_is_named(setup: Setup):
    settings = load_settings({"backup": {"target": f"s3://{setup.s3.bucket}/x", "endpoint_url": setup.s3.url,
                                         "access_key_id": setup.s3.access_key, "secret_block": "no-such-block"}})
    with pytest.raises(ConfigInvalid) as err:
        settings.backup.open_store()
    assert "backup.secret_block: no Secret block named 'no-such-block'" in err.value.message
    assert "Blocks, +, Secret" in err.value.hint


def test_the_block_is_not_readable_without_the_auth_string(setup: Setup):
    with temporary_settings({PREFECT_API_URL: setup.api, PREFECT_API_AUTH_STRING: "mender-upgrade:wrong"}):
        with pytest.raises(PrefectHTTPStatusError) as err:
            Secret.load(BLOCK)
    assert err.value.response.status_code == 401 and setup.s3.secret_key not in str(err.value)


def test_a_secret_block_without_an_access_key_id_is_refused_naming_it():
    with pytest.raises(ConfigInvalid) as err:
        load_settings({"backup": {"target": "s3://b/p", "secret_block": BLOCK}})
    assert "backup.access_key_id" in err.value.message
