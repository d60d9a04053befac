"""The upgrade flow end to end on the sandbox, with a real Prefect API (test harness)."""

from __future__ import annotations

import git
import pytest

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.integration_fixture import OPERATOR_MINIO_SECRET_KEY
from mender_upgrade.sandbox.releases import Release
from mender_upgrade.tasks.backup import NON_WRITERS
from mender_upgrade.tasks.containers import project_states
from tests.flowrun import everything_recorded, flow_settings, report_of, run_flow
from tests.sandbox.conftest import started_at

pytestmark = pytest.mark.sandbox


def _assert_no_secrets(sandbox, run_id: str) -> None:
    """Every log line, artifact and stored parameter of the run is free of secret values."""
    lines, text = everything_recorded(run_id)
    assert lines > 5
    for secret in (sandbox.s3.secret_key, OPERATOR_MINIO_SECRET_KEY):
        assert secret not in text


def test_rejected_second_approval_undoes_the_merge_before_any_downtime(prefect_api, sandbox):
    stack.mark_dirty(sandbox)  # the backup and cleanup ran
    head = git.Repo(sandbox.integration).head.commit.hexsha
    before = started_at(sandbox)
    answers = iter([(True, "plan ok"), (False, "not during the trade fair")])
    state, run_id, asked = run_flow(flow_settings(sandbox, "2.7.2", approval={"approve_before_downtime": True}),
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
    assert "not during the trade fair" in report_of(run_id)
    _assert_no_secrets(sandbox, run_id)


def test_scheduled_restore_drill_flow_passes_without_touching_production(prefect_api, sandbox):
    from mender_upgrade.deployments.definitions import build
    from mender_upgrade.flows.drill import restore_drill_flow
    from mender_upgrade.tasks.backup import ensure_verified_backup

    settings = flow_settings(sandbox, "2.7.2")
    ensure_verified_backup(sandbox.client, sandbox.integration, settings.backup_store(), mode="hot",
                           log=lambda m: None)
    before = started_at(sandbox)
    result = restore_drill_flow(settings=settings)
    assert result["collections"] > 10 and result["files"] >= 4
    assert started_at(sandbox) == before
    deployments = build(settings, "0 1 * * 6", "Europe/Berlin")
    assert [d.name.rsplit("-", 3)[-3:] for d in deployments][-1] == ["weekly", "restore", "drill"]
    assert sandbox.s3.secret_key not in str([d.parameters for d in deployments])
