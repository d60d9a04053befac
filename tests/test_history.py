"""`history` as people read it, on the session's Prefect test server: real runs of the upgrade
flow (refused by planning, failed before it), a recorded run with approvals and a backup, and a
future scheduled run that must not show."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Scheduled
from typer.testing import CliRunner

import mender_upgrade.sandbox.integration_fixture as fx
from mender_upgrade.flows.approvals import Decision
from mender_upgrade.flows.cli import app
from mender_upgrade.flows.report import RunReport, describe, publish, run_name
from mender_upgrade.flows.runner import history
from mender_upgrade.flows.upgrade import upgrade_mender
from mender_upgrade.tasks.run_record import parse_description
from mender_upgrade.tasks.settings import load_settings


@flow(name="upgrade-mender", persist_result=False, flow_run_name="{host} 2.6.4→2.7.2")
def recorded_upgrade(host: str) -> None:
    """Stands in for a run that went the whole way: its real report, with approvals and a backup."""
    publish(RunReport(host=host, run_id=str(flow_run.id), current="2.6.4", target="2.7.2", hops=["2.7.2"],
                      outcome="completed", approvals=[Decision("plan", True, "alice", "go", "approved")],
                      backup={"uri": "s3://b/p/20261129T230000Z-abcd1234/manifest.json"}, downtime_s=14.8))


def _report() -> RunReport:
    return RunReport(host="h1", run_id="r", current="2.6.4", target="2.7.2", outcome="rolled back",
                     reason="services not healthy\nafter 25 s", approvals=[Decision("plan", True, "bob", "", "approved")],
                     backup={"uri": "file:///b/20261129T230000Z-abcd1234/manifest.json"}, downtime_s=3.5)


def test_description_round_trips_through_the_one_parser() -> None:
    summary = parse_description(describe(_report()))
    assert (summary.outcome, summary.host, summary.current, summary.target) == ("rolled back", "h1", "2.6.4", "2.7.2")
    assert summary.reason == "services not healthy\nafter 25 s"
    assert summary.approvals == ({"gate": "plan", "outcome": "approved", "approver": "bob"},)
    assert (summary.backup_id, summary.downtime_s) == ("20261129T230000Z-abcd1234", 3.5)
    old = parse_description("upgrade completed: h1 2.6.4 -> 2.7.2")  # reports from before the summary
    assert (old.outcome, old.reason, old.approvals, old.downtime_s) == ("completed", "", (), None)
    assert parse_description("restore drill passed") is None
    assert parse_description("upgrade completed: h1 2.6.4 -> 2.7.2\n\n```json\n[1]\n```").reason == ""


@pytest.fixture(scope="module")
def runs(prefect_api, tmp_path_factory) -> dict[str, str]:
    """host -> flow run id of each kind of run, on a host of its own."""
    tmp = tmp_path_factory.mktemp("history")
    clone = fx.create_operator_clone(fx.create_upstream(tmp / "integration.git"), tmp / "mender", "2.6.4")
    suffix = uuid.uuid4().hex[:6]
    hosts = {kind: f"{kind}-{suffix}" for kind in ("refused", "broken", "done")}
    ids = {}
    state = upgrade_mender(settings=load_settings({"integration_dir": str(clone), "host_id": hosts["refused"],
                                                   "target_version": "9.9.9"}), return_state=True)
    ids["refused"] = str(state.state_details.flow_run_id)
    state = upgrade_mender(settings=load_settings({"integration_dir": str(tmp / "nowhere"), "host_id": hosts["broken"],
                                                   "target_version": "2.7.2"}), return_state=True)
    ids["broken"] = str(state.state_details.flow_run_id)
    ids["done"] = str(recorded_upgrade(hosts["done"], return_state=True).state_details.flow_run_id)
    with get_client(sync_client=True) as client:  # next Saturday's window, not yet due
        future = client.create_flow_run(upgrade_mender, name=run_name(hosts["done"], "?", "2.7.2"),
                                        state=Scheduled(scheduled_time=datetime.now(timezone.utc) + timedelta(days=3)))
    ids["future"] = str(future.id)
    return {"hosts": hosts, "ids": ids}


def test_runs_are_named_host_from_to_and_history_says_what_happened(runs) -> None:
    hosts, ids = runs["hosts"], runs["ids"]
    refused, = history(host=hosts["refused"])
    assert (refused["id"], refused["name"]) == (ids["refused"], f"{hosts['refused']} 2.6.4→9.9.9")
    assert (refused["from"], refused["to"], refused["outcome"], refused["state"]) == ("2.6.4", "9.9.9", "refused", "Failed")
    assert "target 9.9.9 is not a tag of this repository" in refused["reason"]
    assert refused["duration_s"] is not None and refused["duration_s"] >= 0

    broken, = history(host=hosts["broken"])
    assert broken["name"] == f"{hosts['broken']} ?→2.7.2"  # failed before planning knew the running version
    assert broken["outcome"] == "failed" and "is not a git clone" in broken["reason"]

    done, = history(host=hosts["done"])  # the future scheduled run of this host is left out
    assert done["id"] == ids["done"] and ids["future"] not in {r["id"] for r in history(limit=200)}
    assert (done["outcome"], done["backup_id"], done["downtime_s"]) == ("completed", "20261129T230000Z-abcd1234", 14.8)
    assert done["approvals"] == [{"gate": "plan", "outcome": "approved", "approver": "alice"}]


def test_history_cli_filters_by_host_and_prints_whole_run_ids(runs) -> None:
    hosts, ids = runs["hosts"], runs["ids"]
    result = CliRunner().invoke(app, ["history", "--host", hosts["done"], "--json"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.stdout)] == [ids["done"]]

    result = CliRunner().invoke(app, ["history", "--host", hosts["refused"]])  # stdout is not a terminal
    assert result.exit_code == 0, result.output
    assert ids["refused"] in result.stdout and "2.6.4 → 9.9.9" in result.stdout
    assert ids["done"] not in result.stdout and hosts["done"] not in result.stdout
