"""The upgrade flow end to end on the sandbox, with a real Prefect API (test harness)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import git
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterTags

from flows.cli_upgrade import demo_settings
from flows.lock import host_lock
from flows.runner import history, terminal_approver
from flows.upgrade import upgrade_mender
from sandbox import stack
from sandbox.integration_fixture import OPERATOR_MINIO_SECRET_KEY, add_broken_release
from sandbox.releases import BROKEN_VERSION, Release
from tasks.backup import NON_WRITERS
from tasks.containers import project_states
from tasks.settings import load_settings
from tests.sandbox.conftest import mongo_snapshot, started_at

pytestmark = pytest.mark.sandbox


def _settings(sandbox, target: str, **overrides):
    base = demo_settings(sandbox, target).model_dump()
    base["backup"]["target"] = f"s3://{sandbox.s3.bucket}/flow-{uuid.uuid4().hex[:8]}"
    base["host_id"] = f"sandbox-{uuid.uuid4().hex[:6]}"
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = base.get(key, {}) | value
        else:
            base[key] = value
    return load_settings(base)


def _run(settings, answer=None):
    """Run the flow; `answer(description) -> (approve, comment)` plays the approver via the API."""
    marker = f"t-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    asked: list[str] = []

    def run_id():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[marker])), limit=1)
        return str(runs[0].id) if runs else None

    if answer:
        terminal_approver(run_id, lambda d: (asked.append(d), answer(d))[1], "alice", stop)
    try:
        with tags(marker):
            state = upgrade_mender(settings=settings, poll_interval_s=1, return_state=True)
    finally:
        stop.set()
    return state, run_id(), asked


def _report(run_id: str) -> str:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return next(a.data for a in arts if (a.key or "").startswith("upgrade-report"))


def _assert_no_secrets(sandbox, run_id: str) -> None:
    """Every log line, artifact and stored parameter of the run is free of secret values."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from uuid import UUID
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        run = client.read_flow_run(UUID(run_id))
    text = "\n".join([*(l.message for l in logs), *(f"{a.data} {a.description}" for a in arts), str(run.parameters)])
    assert len(logs) > 5 and arts
    for secret in (sandbox.s3.secret_key, OPERATOR_MINIO_SECRET_KEY):
        assert secret not in text


def test_two_hop_upgrade_approved_through_the_api(prefect_api, sandbox):
    stack.mark_dirty(sandbox)
    state, run_id, asked = _run(_settings(sandbox, "3.0.2"), answer=lambda d: (True, "go ahead"))
    assert state.is_completed(), state.message
    result = state.result()
    assert result["outcome"] == "completed" and result["hops"] == ["2.7.2", "3.0.2"]
    assert result["approvals"][0]["approver"] == "alice" and result["approvals"][0]["comment"] == "go ahead"
    assert "2.7.2 → 3.0.2" in asked[0] and "Template drift" in asked[0]
    assert {s: st.image for s, st in project_states(sandbox.client).items()} == Release("3.0.2").images()
    assert all(st.ok for st in project_states(sandbox.client).values())
    report = _report(run_id)
    assert "**completed**" in report and "sha256" in report and "downtime" in report and "alice" in report
    _assert_no_secrets(sandbox, run_id)
    assert any(h["id"] == run_id and h["outcome"] == "completed" for h in history())


def test_rejection_ends_with_nothing_changed(prefect_api, sandbox):
    head = git.Repo(sandbox.integration).head.commit.hexsha
    before = started_at(sandbox)
    settings = _settings(sandbox, "2.7.2")
    state, run_id, _ = _run(settings, answer=lambda d: (False, "not this week"))
    assert state.is_cancelled()
    assert git.Repo(sandbox.integration).head.commit.hexsha == head
    assert started_at(sandbox) == before
    assert settings.backup.open_store().list_keys("") == []  # not even a backup
    report = _report(run_id)
    assert "**rejected**" in report and "not this week" in report and "alice" in report


def test_unanswered_approval_times_out_as_a_no(prefect_api, sandbox):
    head = git.Repo(sandbox.integration).head.commit.hexsha
    state, run_id, _ = _run(_settings(sandbox, "2.7.2", approval={"timeout_minutes": 0.05}))
    # Prefect itself ends a pause that timed out as Failed("... never resumed").
    assert not state.is_completed() and "never resumed" in state.message
    assert "timed out" in _report(run_id)
    assert git.Repo(sandbox.integration).head.commit.hexsha == head


def test_closed_window_does_nothing(prefect_api, sandbox):
    opened = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    before = started_at(sandbox)
    state, run_id, _ = _run(_settings(sandbox, "2.7.2", window={"start": opened, "duration_minutes": 60}))
    assert state.is_cancelled()
    assert "window closed" in _report(run_id)
    assert started_at(sandbox) == before


def test_second_run_for_the_same_host_is_held_while_another_host_proceeds(prefect_api, sandbox):
    opened = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    closed_window = {"start": opened, "duration_minutes": 60}  # each run ends right after its lock
    with host_lock("host-a", 1):
        held, run_a, _ = _run(_settings(sandbox, "2.7.2", host_id="host-a", lock_wait_s=1, window=closed_window))
        other, run_b, _ = _run(_settings(sandbox, "2.7.2", host_id="host-b", lock_wait_s=1, window=closed_window))
    assert held.is_failed() and "another upgrade of host-a is running" in _report(run_a)
    assert other.is_cancelled() and "window closed" in _report(run_b)


def test_failure_after_downtime_rolls_back_to_the_old_version(prefect_api, sandbox):
    stack.mark_dirty(sandbox)
    add_broken_release(sandbox.upstream)
    with sandbox.mongo() as m:
        before = mongo_snapshot(m)
    state, run_id, _ = _run(_settings(sandbox, BROKEN_VERSION, health_timeout_s=25, cleanup_apply=False),
                            answer=lambda d: (True, ""))
    assert state.is_failed()
    report = _report(run_id)
    assert "**rolled back**" in report and "back on 2.6.4" in report
    assert {s: st.image for s, st in project_states(sandbox.client).items()} == Release("2.6.4").images()
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == before
    repo = git.Repo(sandbox.integration)
    assert any(t.name.startswith("failed-upgrade/") for t in repo.tags)
    _assert_no_secrets(sandbox, run_id)
    assert not repo.is_dirty(untracked_files=True)


def test_rejected_second_approval_undoes_the_merge_before_any_downtime(prefect_api, sandbox):
    stack.mark_dirty(sandbox)  # the backup and cleanup ran
    head = git.Repo(sandbox.integration).head.commit.hexsha
    before = started_at(sandbox)
    answers = iter([(True, "plan ok"), (False, "not during the trade fair")])
    state, run_id, asked = _run(_settings(sandbox, "2.7.2", approval={"approve_before_downtime": True}),
                                answer=lambda d: next(answers))
    assert state.is_cancelled()
    assert len(asked) == 2 and "Downtime for Mender 2.6.4 → 2.7.2" in asked[1]
    assert git.Repo(sandbox.integration).head.commit.hexsha == head
    assert not git.Repo(sandbox.integration).is_dirty(untracked_files=True)
    # No downtime happened: the stack still runs 2.6.4, and what the quiesced backup does not
    # stop (database, storage, gateway) was never restarted.
    assert {s: st.image for s, st in project_states(sandbox.client).items()} == Release("2.6.4").images()
    after = started_at(sandbox)
    assert {s: after[s] for s in NON_WRITERS if s in after} == {s: before[s] for s in NON_WRITERS if s in before}
    assert "not during the trade fair" in _report(run_id)


def test_scheduled_restore_drill_flow_passes_without_touching_production(prefect_api, sandbox):
    from deployments.definitions import build
    from flows.drill import restore_drill_flow
    from tasks.backup import ensure_verified_backup

    settings = _settings(sandbox, "2.7.2")
    ensure_verified_backup(sandbox.client, sandbox.integration, settings.backup.open_store(), mode="hot",
                           log=lambda m: None)
    before = started_at(sandbox)
    result = restore_drill_flow(settings=settings)
    assert result["collections"] > 10 and result["files"] >= 4
    assert started_at(sandbox) == before
    deployments = build(settings, "0 1 * * 6", "Europe/Berlin")
    assert [d.name.rsplit("-", 3)[-3:] for d in deployments][-1] == ["weekly", "restore", "drill"]
    assert sandbox.s3.secret_key not in str([d.parameters for d in deployments])
