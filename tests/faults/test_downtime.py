"""Faults once downtime has begun or the run was killed: the server ends healthy on the old
version (rolled back with the run's verified backup) or on the new one, and nothing is lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import git
import docker
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from mender_upgrade.flows.lock import lock_status
from mender_upgrade.sandbox import engine, stack
from mender_upgrade.sandbox.releases import BROKEN_VERSION
from mender_upgrade.sandbox.s3 import S3_PORT
from mender_upgrade.tasks.repository import FAILED_PREFIX, markers
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.settings import load_settings
from mender_upgrade.tasks.containers import compose_services, project_states
from tests.faults.conftest import assert_invariants, run_backups, take_before, why_of
from tests.realfiles import broken_release
from tests.flowrun import flow_settings, report_of, run_flow
from tests.sandbox.conftest import artifact_snapshot, mongo_snapshot
from tests.sandbox.faultproxy import FaultProxy

pytestmark = pytest.mark.sandbox


def _restart_dockerd(sandbox, down_s: float = 0) -> None:
    """What `systemctl restart docker` does: the engine stops (its containers with it) and starts
    again, after `down_s` seconds without an engine."""
    pid = int(Path("/var/run/docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path("/var/run/docker.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(down_s)
    engine.ensure_engine(sandbox.home)


def _when_recreated(sandbox, action, created: int | None = None) -> threading.Thread:
    """Run `action()` once `./run up -d` has created `created` new containers (default: once every
    service of the merged release has a container again, so the health gate runs). The cycle
    keeps third-party services whose image and configuration do not change: those containers
    stay, so "new" means a container id that was not there when the watch began."""
    label = {"label": "com.docker.compose.project=menderproduction"}
    initial = {c.id for c in sandbox.client.containers.list(all=True, sparse=True, filters=label)}

    def ready() -> bool:
        current = sandbox.client.containers.list(  # sparse: no inspect of containers being removed
            all=True, sparse=True, filters=label)
        new = [c for c in current if c.id not in initial]
        if created is not None:
            return len(new) >= created
        present = {(c.attrs.get("Labels") or {}).get("com.docker.compose.service") for c in current}  # sparse: no .labels
        return bool(new) and set(compose_services(sandbox.integration)) <= present

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if ready():
                    action()
                    return
            except (docker.errors.DockerException, OSError, UpgradeError):
                pass  # a container removed while listed, or the merge not yet done: look again
            time.sleep(0.05)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.fault(case="docker daemon restarted during `up -d`",
                   injected="dockerd stopped and started again while `./run up -d` creates the new containers")
def test_dockerd_restart_during_up(prefect_api, sandbox, fault):
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    restarted = threading.Event()
    # After `./run rm -f` the project has no container; the first new one means `up -d` runs.
    watcher = _when_recreated(sandbox, lambda: (_restart_dockerd(sandbox), restarted.set()), created=1)
    state, run_id, _ = run_flow(settings, answer=lambda d: (True, "go"))
    watcher.join(timeout=5)
    assert restarted.is_set(), "the engine was never restarted"
    report = report_of(run_id)
    fault.did = why_of(report)
    # Either outcome keeps the invariants: rolled back to 2.6.4, or the stack came up on 2.7.2 anyway.
    assert state.is_failed() or state.is_completed(), state.message
    if state.is_failed():
        assert_invariants(sandbox, before, run_backups(sandbox, settings), report, ["**rolled back**", "back on 2.6.4"])
    else:
        assert_invariants(sandbox, before, run_backups(sandbox, settings), report, ["**completed**"], new_version="2.7.2")


@pytest.mark.fault(case="new version runs but does not serve",
                   injected=f"target {BROKEN_VERSION}: its deployments process stays up \"migrating\", with no "
                            "healthcheck, and never answers its health endpoint")
def test_release_that_runs_but_does_not_serve_is_rolled_back(prefect_api, sandbox, fault):
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    artifacts = artifact_snapshot(sandbox)
    with broken_release(sandbox.integration) as target:
        settings = flow_settings(sandbox, target, health_timeout_s=25)
        state, run_id, _ = run_flow(settings, answer=lambda d: (True, ""))
    assert state.is_failed()
    report = report_of(run_id)
    fault.did = why_of(report)
    # What Docker alone shows would pass: same image family, no HEALTHCHECK, the process running.
    broken_image = sandbox.client.images.get(f"mendersoftware/deployments:mender-{BROKEN_VERSION}")
    assert broken_image.attrs["Config"].get("Healthcheck") is None
    assert "mender-deployments: running; GET http://" in report
    assert "/api/internal/v1/deployments/health answered connection refused" in report
    # The quiet period ran from the first writer stop until the old version served again.
    unavailable = re.search(r"^- unavailability: ([0-9.]+) s until the old version served again \((.*)\)$", report, re.M)
    assert unavailable, report
    parts = dict((name, float(v)) for name, v in re.findall(r"(\w+) ([0-9.]+) s", unavailable[2]))
    assert {"dump", "delta", "merge", "rollback", "other"} <= set(parts) and parts["rollback"] > 0
    assert float(unavailable[1]) >= 25  # the health gate waited 25 s for the broken release
    assert "./run logs" in report
    assert markers(git.Repo(sandbox.integration), FAILED_PREFIX)
    assert_invariants(sandbox, before, run_backups(sandbox, settings), report, ["**rolled back**", "back on 2.6.4", "not healthy"])
    assert artifact_snapshot(sandbox) == artifacts  # every artifact file, mode and owner restored too


def _runs_of(host_id: str, state_type: str) -> list[FlowRun]:
    """`host_id`'s upgrade runs in that state, newest first (the server's default order is by
    random id)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["upgrade-mender"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(state_type)]))),
            sort=FlowRunSort.START_TIME_DESC)
    return [r for r in runs if (r.parameters.get("settings") or {}).get("host_id") == host_id]


@pytest.mark.fault(case="flow killed with SIGKILL mid-backup, then started again",
                   injected="`mender-upgrade run` SIGKILLed as its database dump upload starts (quiet period: "
                            "writers stopped, lock held)")
def test_sigkill_mid_backup_then_run_again(prefect_api, sandbox, fault, tmp_path):
    from prefect.settings import PREFECT_API_URL
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    killed: list[subprocess.Popen] = []
    proxy = FaultProxy(S3_PORT, on_request=([b"?uploads", b"/mongo.archive.gz"],
                                            lambda: os.killpg(killed[0].pid, signal.SIGKILL)))
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False, backup={"endpoint_url": proxy.url})
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    config = tmp_path / "upgrade.yaml"
    config.write_text(yaml.safe_dump(data))
    cli = Path(sys.executable).parent / "mender-upgrade"
    try:
        killed.append(subprocess.Popen([str(cli), "run", "--config", str(config), "--yes"], start_new_session=True,
                                       env=os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert killed[0].wait(timeout=300) == -signal.SIGKILL
    finally:
        proxy.close()
    assert proxy.on_request is None, "the run was not killed mid-backup"
    # Started again at once: it waits while the dead run's guardian puts the server back and holds
    # the lock, then gets it without `unlock`.
    direct = load_settings(data | {"backup": data["backup"] | {"endpoint_url": sandbox.s3.url}, "lock_wait_s": 300})
    state, run_id, _ = run_flow(direct, answer=lambda d: (True, "again"))
    report = report_of(run_id)
    assert state.is_completed(), state.message
    fault.did = ("the guardian started the writers again, marked the dead run Crashed and freed the lock; the run "
                 "started right after waited for the lock, cleared the dead run's leftovers and completed")
    [dead] = [r for r in _runs_of(settings.host_id, "CRASHED") if str(r.id) != run_id]
    assert "guardian" in dead.state.message and "killed" in dead.state.message, dead.state.message
    assert "the guardian undid it" in report_of(str(dead.id))
    assert direct.backup_store().pending_uploads() == []
    assert_invariants(sandbox, before, direct.backup_store(), report, ["**completed**"], new_version="2.7.2")


@pytest.mark.fault(case="Docker API error mid-cycle",
                   injected="dockerd gone for 5 s while the health gate polls the new containers (the SDK raises "
                            "requests.ConnectionError)")
def test_docker_api_error_mid_cycle_rolls_back(prefect_api, sandbox, fault):
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    done = threading.Event()
    watcher = _when_recreated(sandbox, lambda: (_restart_dockerd(sandbox, down_s=5), done.set()))
    state, run_id, _ = run_flow(settings, answer=lambda d: (True, "go"))
    watcher.join(timeout=5)
    assert done.is_set(), "the engine was never stopped during the health gate"
    report = report_of(run_id)
    fault.did = why_of(report)
    assert state.is_failed(), state.message
    assert_invariants(sandbox, before, run_backups(sandbox, settings), report, ["**rolled back**", "back on 2.6.4"])


@pytest.mark.fault(case="run's process killed mid-cycle",
                   injected="SIGKILL to the run's process group (where a runner's cancel ends 30 s after its "
                            "SIGTERM; an OOM kill) once the new containers exist")
def test_kill_mid_cycle_rolls_back_by_the_guardian(prefect_api, sandbox, fault, tmp_path):
    from prefect.settings import PREFECT_API_URL
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    config = tmp_path / "upgrade.yaml"
    config.write_text(yaml.safe_dump(data))
    cli = Path(sys.executable).parent / "mender-upgrade"
    run = subprocess.Popen([str(cli), "run", "--config", str(config), "--yes"], start_new_session=True,
                           env=os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent = threading.Event()
    watcher = _when_recreated(sandbox, lambda: (os.killpg(run.pid, signal.SIGKILL), sent.set()))
    try:
        run.wait(timeout=900)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    watcher.join(timeout=5)
    assert sent.is_set(), "the run was never killed mid-cycle"
    run_id = str(_runs_of(settings.host_id, "RUNNING")[0].id)  # killed: it stays RUNNING
    deadline = time.monotonic() + 600
    while "**rolled back**" not in (report := _report_if_any(run_id)) and time.monotonic() < deadline:
        time.sleep(1)
    fault.did = why_of(report)
    while lock_status(settings.host_id).held and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not lock_status(settings.host_id).held, "the guardian did not free the host lock"
    assert _runs_of(settings.host_id, "CRASHED")[0].id == UUID(run_id)  # not left RUNNING in the history
    assert_invariants(sandbox, before, run_backups(sandbox, settings), report,
                      ["**rolled back**", "killed", "guardian rolled back", "back on 2.6.4"], run=settings)


def _report_if_any(run_id: str) -> str:
    try:
        return report_of(run_id)
    except StopIteration:  # the killed run published none; the guardian's comes after its rollback
        return ""


@pytest.mark.fault(case="writes during the pre-copy, then a rollback",
                   injected=f"a device document, a deployment and a 3 MB artifact written while the pre-copy uploads "
                            f"the artifact volume; target {BROKEN_VERSION}, which never gets healthy")
def test_writes_during_precopy_survive_a_rollback(prefect_api, sandbox, fault):
    stack.mark_dirty(sandbox)
    before = take_before(sandbox)
    after_writes: dict = {}

    def write_while_serving() -> None:
        # The server serves during the pre-copy: what it accepts now must survive a rollback.
        with sandbox.mongo() as m:
            m.deviceauth.devices.insert_one({"_id": "authorised-during-pre-copy", "status": "accepted"})
            m.deployment_service.deployments.insert_one({"_id": "deployed-during-pre-copy", "name": "late"})
        minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
        assert minio.exec_run(["sh", "-c", "head -c 3000000 /dev/urandom > "
                               "/export/mender-artifact-storage/uploaded-during-pre-copy.mender"]).exit_code == 0
        with sandbox.mongo() as m:
            after_writes["mongo"] = mongo_snapshot(m)
        after_writes["files"] = artifact_snapshot(sandbox)

    proxy = FaultProxy(S3_PORT, on_request=([b"volumes/mender-artifacts.tar", b"partNumber=1"], write_while_serving))
    try:
        with broken_release(sandbox.integration) as target:
            settings = flow_settings(sandbox, target, health_timeout_s=25, backup={"endpoint_url": proxy.url})
            state, run_id, _ = run_flow(settings, answer=lambda d: (True, ""))
    finally:
        proxy.close()
    assert proxy.on_request is None, "nothing was written during the pre-copy"
    assert state.is_failed()
    report = report_of(run_id)
    fault.did = why_of(report)
    before.mongo = after_writes["mongo"]  # the database must equal its state after the writes
    assert_invariants(sandbox, before, run_backups(sandbox, settings), report,
                      ["**rolled back**", "back on 2.6.4", "not healthy"], run=settings)
    assert artifact_snapshot(sandbox) == after_writes["files"]
    assert any(line.endswith("uploaded-during-pre-copy.mender") for line in after_writes["files"])
