"""Faults in the middle of a run, after approval and before any downtime: the run fails, undoes
what it changed, and leaves the old version serving."""

from __future__ import annotations

import subprocess
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

from mender_upgrade.sandbox.s3 import S3_PORT
from mender_upgrade.tasks.backup import ensure_verified_backup, list_backups
from mender_upgrade.tasks.restore import check_archives
from mender_upgrade.tasks.settings import BackupSettings
from mender_upgrade.tasks.containers import project_states
from tests.faults.conftest import assert_invariants, run_backups, take_before, why_of
from tests.flowrun import flow_settings, report_of, run_flow
from tests.sandbox.faultproxy import FaultProxy

pytestmark = pytest.mark.sandbox


def _stop(sandbox, *services: str) -> None:
    states = project_states(sandbox.client)
    for service in services:
        sandbox.client.containers.get(states[service].container_id).stop(timeout=5)


def _stop_mongo(sandbox) -> None:
    _stop(sandbox, "mender-mongo")


def _failed_run(sandbox, fault, settings, answer=lambda d: (True, "go")) -> str:
    state, run_id, asked = run_flow(settings, answer=answer)
    assert state.is_failed() and len(asked) == 1, state.message
    report = report_of(run_id)
    fault.did, fault.run_id = why_of(report), run_id
    return report


def _attempts(run_id: str, task_name: str) -> list[int]:
    """How many times each task run of the flow run whose name holds `task_name` ran (1: no retry)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=task_name)))
    return [r.run_count for r in runs]


@pytest.mark.fault(case="mongo and minio stopped before backup",
                   injected="mender-mongo and minio stopped right after the approval")
def test_mongo_and_minio_stopped_before_backup(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)

    def stop_then_approve(description):
        _stop(sandbox, "mender-mongo", "minio")
        return True, "go"
    settings = flow_settings(sandbox, "2.7.2")
    report = _failed_run(sandbox, fault, settings, stop_then_approve)
    assert_invariants(sandbox, before, baseline, report,
                      ["**failed**", "not running", "before any downtime", "started mender-mongo, minio"],
                      run=settings)
    # Nothing waited for minio's first Docker health check, a minute after its start (storage-proxy
    # depends on it being healthy: compose would wait if both started in one call); the gate ran
    # minio's own check in the container instead.
    assert project_states(sandbox.client)["minio"].health == "starting"


@pytest.mark.fault(case="mongo stopped during cleanup",
                   injected="mender-mongo stopped once the cleanup's saved copy reaches S3, before its deletes")
def test_mongo_stopped_during_cleanup(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    proxy = FaultProxy(S3_PORT, on_request=([b"/cleanup/", b"manifest.json"], lambda: _stop_mongo(sandbox)))
    try:
        settings = flow_settings(sandbox, "2.7.2", backup={"endpoint_url": proxy.url})
        report = _failed_run(sandbox, fault, settings)
    finally:
        proxy.close()
    assert proxy.on_request is None, "the fault was never injected"
    # The proxy is closed: the invariants read this run's backup straight from S3.
    store = run_backups(sandbox, settings)
    assert store.list_keys("")  # this run made a backup: invariant 2 checks it
    # The cleanup's copy is in this host's namespace, where only this host prunes and clean-ups run.
    assert [k for k in store.list_keys("cleanup/") if k.endswith("/leftovers.bson")]
    root = BackupSettings.model_validate(settings.backup.model_dump() | {
        "endpoint_url": sandbox.s3.url, "secret_access_key": sandbox.s3.secret_key}).open_store()
    assert not [k for k in root.list_keys("") if k.startswith("cleanup/")], "a cleanup copy at the target's root"
    assert_invariants(sandbox, before, baseline, report,
                      ["**failed**", "mender-mongo", "not running (exited)", "before any downtime",
                       "started mender-mongo", "cleanup undone"],
                      run=settings)
    # A stopped mender-mongo does not come back by waiting: the cleanup failed on its first
    # attempt instead of retrying (MONGO_RETRIES is for a connection that may come back).
    assert _attempts(fault.run_id, "cleanup-deviceauth") == [1]


@pytest.mark.fault(case="S3 killed mid-upload", injected="every S3 connection cut 3 MB into the backup (inside the "
                   "artifact volume's 6 MiB file), S3 gone after")
def test_s3_killed_mid_upload(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    proxy = FaultProxy(S3_PORT, cut_after_bytes=3_000_000, outage_s=3600)
    try:
        settings = flow_settings(sandbox, "2.7.2", backup={"endpoint_url": proxy.url})
        report = _failed_run(sandbox, fault, settings)
        assert proxy.cuts == 1
    finally:
        proxy.close()
    assert_invariants(sandbox, before, baseline, report, ["**failed**", "unreachable", "before any downtime"],
                      run=settings)


@pytest.mark.fault(case="local backup target full", injected="backup target on a 1 MiB tmpfs")
def test_local_backup_target_full(prefect_api, sandbox, fault, baseline, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        before = take_before(sandbox)
        settings = flow_settings(sandbox, "2.7.2", backup={"target": f"file://{mount}/b"})
        report = _failed_run(sandbox, fault, settings)
        leftovers = [p for p in (mount / "b").rglob("*") if p.is_file()]
        assert not [p for p in leftovers if p.name == "manifest.json"]  # no backup: invariant 2 checks the baseline
        assert not [p for p in leftovers if p.name.endswith(".partial") or p.name == "manifest.json"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert_invariants(sandbox, before, baseline, report, ["**failed**", "full", "before any downtime"])


@pytest.mark.fault(case="two hosts sharing a target with keep_last = 1",
                   injected="host-b's backup and an upload of host-b in progress while host-a backs up and prunes twice")
def test_two_hosts_sharing_a_target_keep_each_others_backups(sandbox, fault, baseline):
    before = take_before(sandbox)
    shared = flow_settings(sandbox, "2.7.2").backup.model_copy(update={"keep_last": 1})
    host_a, host_b = shared.open_store("host-a"), shared.open_store("host-b")

    def backup(store, run_id):
        return ensure_verified_backup(sandbox.client, sandbox.integration, store, run_id=run_id, mode="hot",
                                      keep_last=1, holds_lock=True, log=lambda m: None)
    b1 = backup(host_b, "run-b-1")
    s3 = sandbox.s3.client()
    bucket, prefix = sandbox.s3.bucket, host_b.prefix
    pending = s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/in-progress/volumes/x.tar")["UploadId"]
    try:
        a1 = backup(host_a, "run-a-1")
        a2 = backup(host_a, "run-a-2")
        assert [m.backup_id for m in list_backups(host_a)] == [a2.backup_id]  # a1 pruned: keep_last = 1
        assert a1.backup_id not in {m.backup_id for m in list_backups(host_a)}
        assert [m.backup_id for m in list_backups(host_b)] == [b1.backup_id]
        assert host_b.pending_uploads() == ["in-progress/volumes/x.tar"]
        check_archives(host_b, b1)
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=f"{prefix}/in-progress/volumes/x.tar", UploadId=pending)
    fault.did = ("host-a pruned and aborted only under <target>/host-a/: host-b's backup and its upload "
                 "in progress are intact")
    assert_invariants(sandbox, before, host_b, fault.did, ["host-b's backup"])
