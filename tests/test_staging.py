"""Staging before production, against real run history: tiny runs of a flow named
upgrade-mender publish real reports (mender_upgrade.flows.report.publish) on the session's Prefect test server.
"""

from __future__ import annotations

import uuid

import pytest
from prefect import flow
from prefect.runtime import flow_run

from mender_upgrade.flows.report import RunReport, publish
from mender_upgrade.tasks.repository import InvalidRef
from mender_upgrade.tasks.settings import ConfigInvalid
from mender_upgrade.tasks.staging import StagingNotDone, require_completed_on_staging


@flow(name="upgrade-mender", persist_result=False)
def recorded_upgrade(host: str, current: str, target: str, outcome: str, run_fails: bool = False) -> None:
    """Stands in for the upgrade flow's record: its report, and its end state (Failed unless completed)."""
    publish(RunReport(host=host, run_id=str(flow_run.id), current=current, target=target, outcome=outcome))
    if outcome != "completed" or run_fails:
        raise RuntimeError(f"upgrade {outcome}")


def record(host: str, target: str, outcome: str, run_fails: bool = False) -> None:
    recorded_upgrade(host, "2.6.4", target, outcome, run_fails, return_state=True)


def new_host() -> str:
    return f"staging-{uuid.uuid4().hex[:8]}"  # the test server is shared: a host per test


def test_no_run_on_staging_refuses_and_says_what_to_do(prefect_api) -> None:
    host = new_host()
    with pytest.raises(StagingNotDone) as err:
        require_completed_on_staging(host, "3.0.2")
    assert f"no upgrade of staging host {host} to 3.0.2 is on record" in err.value.message
    assert f"upgrade the staging server {host} to 3.0.2 first" in err.value.hint


def test_only_a_completed_run_to_the_same_target_on_the_same_host_counts(prefect_api) -> None:
    host, other = new_host(), new_host()
    record(host, "3.0.2", "failed")
    record(host, "3.0.1", "completed")
    record(other, "3.0.2", "completed")
    with pytest.raises(StagingNotDone, match="ended 'failed'"):
        require_completed_on_staging(host, "3.0.2")
    record(host, "3.0.2", "completed")
    proof = require_completed_on_staging(host, "3.0.2")
    assert proof.startswith(f"3.0.2 completed on staging host {host} in flow run ")
    with pytest.raises(StagingNotDone, match="no upgrade"):
        require_completed_on_staging(host, "3.1.0")


def test_a_later_rolled_back_run_to_the_target_withdraws_the_proof(prefect_api) -> None:
    host = new_host()
    record(host, "3.0.2", "completed")
    record(host, "3.0.2", "rolled back")
    with pytest.raises(StagingNotDone, match="ended 'rolled back'"):
        require_completed_on_staging(host, "3.0.2")


def test_a_completed_report_of_a_run_that_then_failed_is_no_proof(prefect_api) -> None:
    host = new_host()
    record(host, "3.0.2", "completed", run_fails=True)
    with pytest.raises(StagingNotDone, match="did not end Completed"):
        require_completed_on_staging(host, "3.0.2")


def test_hosts_sharing_a_report_key_do_not_vouch_for_each_other(prefect_api) -> None:
    suffix = uuid.uuid4().hex[:8]
    record(f"stg.{suffix}", "3.0.2", "completed")  # report key upgrade-report-stg-<suffix>, as stg-<suffix>'s
    with pytest.raises(StagingNotDone, match="no upgrade"):
        require_completed_on_staging(f"stg-{suffix}", "3.0.2")
    require_completed_on_staging(f"stg.{suffix}", "3.0.2")


@pytest.mark.parametrize("host,target,error", [("-x", "3.0.2", ConfigInvalid), ("a b", "3.0.2", ConfigInvalid),
                                               ("stg", "3.0.2; id", InvalidRef), ("stg", "latest", InvalidRef)])
def test_hostile_host_or_target_is_refused_before_any_query(host: str, target: str, error: type) -> None:
    with pytest.raises(error):
        require_completed_on_staging(host, target)
