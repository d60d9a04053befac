"""The host file against a real Prefect server (the session's test server, no Docker): a run
whose parameters widen it is refused before anything changes, and the refusal is in the run's
history; the process pool's job template takes no job variables."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import PrefectHTTPStatusError
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from mender_upgrade.flows.upgrade import upgrade_mender
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
from mender_upgrade.tasks.run_record import report_key
from mender_upgrade.tasks.settings import load_settings
from tests.flowrun import everything_recorded
from tests.unit.test_host_policy import HOST_TOML

TEMPLATE = Path(__file__).resolve().parents[1] / "deployments" / "process_pool_template.json"


@pytest.fixture
def host_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "host.toml"
    # An integration dir that does not exist: the refusal must come before anything reads it.
    path.write_text(HOST_TOML.replace("/opt/mender/integration", str(tmp_path / "never-touched")))
    path.chmod(0o644)
    os.chown(path, 0, 0)
    monkeypatch.setenv(HOST_FILE_ENV, str(path))
    return path


@pytest.mark.parametrize("params,field", [
    ({"approval": {"require_approval": False}}, "approval.require_approval"),
    ({"backup": {"target": "s3://attacker-bucket/loot"}}, "backup.target"),
    ({"integration_dir": "/srv/other-clone"}, "integration_dir"),
])
def test_a_widening_run_is_refused_and_recorded(prefect_api, host_file, tmp_path, params, field):
    state = upgrade_mender(settings=load_settings(params | {"target_version": "2.7.2"}), return_state=True)
    assert state.is_failed()
    assert f"{field}:" in state.message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        artifacts = client.read_artifacts()
    report = next(a for a in artifacts if a.flow_run_id == run.id and a.key == report_key("mender-prod-1"))
    assert report.description.startswith("upgrade refused: mender-prod-1")
    assert f"{field}:" in report.data
    _, recorded = everything_recorded(str(run.id))
    assert "host-file-secret-value" not in recorded
    assert not (tmp_path / "never-touched").exists()


async def _create_pool_and_deployment(client, pool: str, template: dict | None) -> UUID:
    await client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template or {}))

    @flow(name=f"job-template-probe-{pool}")
    def probe() -> None:
        pass

    flow_id = await client.create_flow(probe)
    return await client.create_deployment(flow_id=flow_id, name="probe", work_pool_name=pool,
                                          entrypoint="flows/upgrade.py:upgrade_mender")


def test_the_process_pool_template_takes_no_job_variables(prefect_api):
    locked = json.loads(TEMPLATE.read_text())

    async def scenario() -> None:
        async with get_client() as client:
            # The default process template lets a run replace the worker's command: the control.
            open_deployment = await _create_pool_and_deployment(client, "open-pool", ProcessWorker.get_default_base_job_template())
            run = await client.create_flow_run_from_deployment(open_deployment, job_variables={"command": "touch /tmp/pwned"})
            assert run.job_variables == {"command": "touch /tmp/pwned"}

            locked_deployment = await _create_pool_and_deployment(client, "locked-pool", locked)
            for variables in ({"command": "touch /tmp/pwned"}, {"env": {"LD_PRELOAD": "/tmp/evil.so"}},
                              {"working_dir": "/tmp"}):
                with pytest.raises(PrefectHTTPStatusError) as err:
                    await client.create_flow_run_from_deployment(locked_deployment, job_variables=variables)
                assert err.value.response.status_code == 422
            flow_id = (await client.read_deployment(locked_deployment)).flow_id
            with pytest.raises(PrefectHTTPStatusError) as err:
                await client.create_deployment(flow_id=flow_id, name="with-command", work_pool_name="locked-pool",
                                               entrypoint="flows/upgrade.py:upgrade_mender",
                                               job_variables={"command": "sh -c id"})
            assert err.value.response.status_code == 422
            # What the worker builds from it: Prefect's engine command and the worker's own environment.
            config = await ProcessJobConfiguration.from_template_and_values(locked, {})
            assert config.command is None and config.env == {} and config.working_dir is None

    asyncio.run(scenario())
