"""Backup -> verify -> restore, the drill, retention and the fault cases, on the sandbox."""

from __future__ import annotations

import io
import socket
import uuid

import pytest
from botocore.exceptions import ClientError

from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.backup import MONGO_OBJECT, DumpFailed, Manifest, dump_mongo_to_store, ensure_verified_backup, list_backups, prune_backups, read_manifest
from mender_upgrade.tasks.containers import project_states, wait_until_healthy
from mender_upgrade.tasks.backup import OtherHostsBackup
from mender_upgrade.tasks.restore import restore_backup, restore_drill
from mender_upgrade.tasks.settings import BackupSettings
from mender_upgrade.tasks.store import BucketNotImmutable
from mender_upgrade.sandbox.s3 import S3_PORT
from tests.sandbox.conftest import anonymous_dangling_volumes, artifact_snapshot, mongo_snapshot, started_at
from tests.sandbox.faultproxy import FaultProxy

pytestmark = pytest.mark.sandbox


def _backup(sandbox, store, **kw) -> Manifest:
    return ensure_verified_backup(sandbox.client, sandbox.integration, store, log=lambda m: None, **kw)


def _mongo(sandbox):
    return sandbox.client.containers.get(project_states(sandbox.client)["mender-mongo"].container_id)


def test_backup_verify_restore_roundtrips_everything(sandbox, s3_settings):
    store = s3_settings.open_store("sandbox-host")
    with sandbox.mongo() as m:
        before_db = mongo_snapshot(m)
    before_files = artifact_snapshot(sandbox)
    # A file in mongod's live data directory: no backup reads it, no restore may touch it.
    assert _mongo(sandbox).exec_run(["touch", "/data/db/mender-upgrade-canary"]).exit_code == 0
    manifest = _backup(sandbox, store)

    assert manifest.verified and manifest.mode == "quiesce" and manifest.host_id == "sandbox-host"
    assert manifest.integration_version == "2.6.4" and len(manifest.git_sha) == 40
    assert manifest.mongo_version.startswith("4.4") and manifest.feature_compatibility_version == "4.4"
    # mender-db is mounted at mender-mongo's /data/db: left to mongodump, never archived as files.
    assert {o.name for o in manifest.objects} == {"mender-mongo", "mender-artifacts"}
    assert manifest.counts["deviceauth"]["devices"] == len(before_db["deviceauth.devices"][0])
    assert "mender-deployments" in manifest.image_digests
    assert store.uri == f"{s3_settings.target}/sandbox-host"
    stored = read_manifest(store, manifest.key)
    assert stored.verified and stored.objects == manifest.objects

    # Damage production: drop documents, add one, delete and change artifact files.
    with sandbox.mongo() as m:
        m.deviceauth.devices.delete_many({"status": "accepted"})
        m.inventory.devices.insert_one({"_id": "intruder"})
        m.drop_database("deployment_service")
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    minio.exec_run(["sh", "-c", "rm -rf /export/.minio.sys && echo x > /export/mender-artifact-storage/release-1.mender "
                    "&& echo new > /export/stray"])
    assert artifact_snapshot(sandbox) != before_files

    restore_backup(sandbox.client, sandbox.integration, store, manifest, host_id="sandbox-host",
                   stability_window=2, log=lambda m: None)
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == before_db
    assert artifact_snapshot(sandbox) == before_files
    assert _mongo(sandbox).exec_run(["ls", "/data/db/mender-upgrade-canary"]).exit_code == 0


def test_restore_and_drill_refuse_another_hosts_backup(sandbox, s3_settings):
    manifest = _backup(sandbox, s3_settings.open_store("host-a"), mode="hot")
    store_a = s3_settings.open_store("host-a")
    before = started_at(sandbox)
    with pytest.raises(OtherHostsBackup, match="host 'host-a', this is 'host-b'"):
        restore_backup(sandbox.client, sandbox.integration, store_a, manifest, host_id="host-b", log=lambda m: None)
    with pytest.raises(OtherHostsBackup):
        restore_drill(sandbox.client, store_a, manifest, "unused", host_id="host-b", log=lambda m: None)
    assert started_at(sandbox) == before


def test_drill_restores_elsewhere_and_leaves_production_untouched(sandbox, s3_settings):
    store = s3_settings.open_store("sandbox-host")
    manifest = _backup(sandbox, store, mode="hot")
    with sandbox.mongo() as m:
        before_db = mongo_snapshot(m)
    before_start = started_at(sandbox)
    image = sandbox.client.containers.get(project_states(sandbox.client)["mender-mongo"].container_id).attrs["Config"]["Image"]
    report = restore_drill(sandbox.client, store, manifest, image, host_id="sandbox-host", log=lambda m: None)
    assert report.passed, report.differences
    assert report.collections_checked > 10 and report.files_checked >= 4
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == before_db
    assert started_at(sandbox) == before_start
    assert sandbox.client.containers.list(all=True, filters={"label": "org.mender-upgrade.drill"}) == []
    assert [v for v in sandbox.client.volumes.list() if v.name.startswith("mender-upgrade-drill-")] == []


def test_volume_helpers_leave_no_anonymous_volumes(sandbox, s3_settings):
    """The mongo image declares VOLUME /data/db: every helper container made from it gets an
    anonymous volume, which must go with the helper (backup, drill restore and digest)."""
    store = s3_settings.open_store("sandbox-host")
    before = anonymous_dangling_volumes(sandbox.client)
    manifest = _backup(sandbox, store)
    image = sandbox.client.containers.get(project_states(sandbox.client)["mender-mongo"].container_id).attrs["Config"]["Image"]
    assert "/data/db" in (sandbox.client.images.get(image).attrs["Config"].get("Volumes") or {})
    assert restore_drill(sandbox.client, store, manifest, image, host_id="sandbox-host", log=lambda m: None).passed
    assert anonymous_dangling_volumes(sandbox.client) - before == set()


def test_quiesce_restarts_writers_and_hot_stops_nothing(sandbox, tmp_path):
    store = BackupSettings(target=f"file://{tmp_path}/backups").open_store("sandbox-host")
    before = started_at(sandbox)
    manifest = _backup(sandbox, store, mode="hot")
    assert manifest.mode == "hot" and started_at(sandbox) == before
    _backup(sandbox, store, mode="quiesce")
    after = started_at(sandbox)
    restarted = {s for s in before if before[s] != after[s]}
    assert restarted == {"mender-deployments", "mender-device-auth", "mender-inventory", "mender-useradm",
                         "mender-workflows-server"}
    wait_until_healthy(sandbox.client, list(after), timeout=60, stability_window=0)


def test_writers_are_running_services_of_the_current_configuration(sandbox):
    """Not an orphan of a service the configuration no longer has (storage-proxy after 2.7),
    not a one-off `run` container, not a configured service that is stopped: `./run stop`
    would fail on the first two, and the third has nothing to stop."""
    from mender_upgrade.tasks.backup import NON_WRITERS, writer_services
    from mender_upgrade.tasks.containers import ONEOFF_LABEL, PROJECT, PROJECT_LABEL, SERVICE_LABEL, compose_services
    configured = set(compose_services(sandbox.integration))
    extra, inventory = [], project_states(sandbox.client)["mender-inventory"].container_id
    try:
        for service, oneoff in [("storage-proxy-retired", "False"), ("mender-useradm", "True")]:
            extra.append(sandbox.client.containers.run(
                "mongo:4.4", entrypoint=["sleep", "300"], detach=True, network_mode="none",
                labels={stack.SANDBOX_LABEL: "writer-test", PROJECT_LABEL: PROJECT, SERVICE_LABEL: service,
                        ONEOFF_LABEL: oneoff}))
        sandbox.client.containers.get(inventory).stop(timeout=5)
        writers = writer_services(sandbox.client, sandbox.integration)
        assert writers == sorted(configured - NON_WRITERS - {"mender-inventory"})
        assert "storage-proxy-retired" not in writers and "mender-useradm" in writers
    finally:
        for container in extra:
            container.remove(force=True, v=True)
        sandbox.client.containers.get(inventory).start()
    wait_until_healthy(sandbox.client, sorted(configured), timeout=60, stability_window=0)


def test_a_failed_restart_after_a_failed_backup_keeps_the_backups_error(sandbox, s3_settings):
    """Both failures for real: S3 goes away as the dump's upload starts (a TCP proxy cuts every
    connection), and the stopped writers' containers are gone by then, so the operator's
    `./run start` fails (compose: no containers to start). The backup's failure stays the error
    (its type decides retries), the restart's is added to it, not put in its place."""
    from mender_upgrade.tasks.backup import writer_services
    from mender_upgrade.tasks.containers import run_compose
    from mender_upgrade.tasks.store import StoreUnreachable
    writers = writer_services(sandbox.client, sandbox.integration)
    removed: list[str] = []

    def remove_stopped_writers_then_cut() -> None:
        for service in writers:
            container = sandbox.client.containers.get(project_states(sandbox.client)[service].container_id)
            assert container.status == "exited", f"{service} not stopped for the dump"
            container.remove(v=True)
            removed.append(service)
        proxy.cut()

    proxy = FaultProxy(S3_PORT, outage_s=3600, on_request=([b"PUT ", MONGO_OBJECT.encode()],
                                                            remove_stopped_writers_then_cut))
    store = s3_settings.model_copy(update={"endpoint_url": proxy.url}).open_store("sandbox-host")
    try:
        with pytest.raises(StoreUnreachable) as err:
            _backup(sandbox, store, writers=writers)
    finally:
        proxy.close()
        run_compose(sandbox.integration, ["up", "-d"])  # what the operator does next
    assert removed == writers, "the fault was never injected"
    message = err.value.message
    restart = f"; starting the writers again ({', '.join(writers)}) failed too: `./run start"
    assert restart in message and message.index(restart) > 0, message
    assert "No containers to start" in message, message
    assert err.value.hint and "./run start" not in err.value.hint  # the first error's own advice
    wait_until_healthy(sandbox.client, list(project_states(sandbox.client)), timeout=60, stability_window=0)


def test_retention_keeps_the_newest_verified(sandbox, tmp_path):
    store = BackupSettings(target=f"file://{tmp_path}/backups").open_store("sandbox-host")
    ids = [_backup(sandbox, store, mode="hot", keep_last=2).backup_id for _ in range(3)]
    assert [m.backup_id for m in list_backups(store)] == ids[1:]
    assert prune_backups(store, keep_last=1) == [ids[1]]
    assert [m.backup_id for m in list_backups(store)] == [ids[2]]


def test_failing_mongodump_leaves_no_complete_object(sandbox, s3_settings):
    # A mongo container whose server never started: the real CLI path, mongodump fails to connect.
    dead = sandbox.client.containers.run("mongo:4.4", entrypoint=["sleep", "300"], detach=True,
                                         labels={stack.SANDBOX_LABEL: "dead-mongo"})
    store = s3_settings.open_store("sandbox-host")
    try:
        with pytest.raises(DumpFailed) as err:
            dump_mongo_to_store(dead.id, store, "x/mongo.archive.gz")
        assert "exited" in str(err.value)
    finally:
        dead.remove(force=True, v=True)  # and the anonymous volume of its VOLUME /data/db
    assert store.list_keys("") == []
    assert store.pending_uploads() == []


def test_cli_backup_drill_and_restore(sandbox, s3_settings):
    from typer.testing import CliRunner

    from mender_upgrade.flows.cli import app
    env = {"AWS_ACCESS_KEY_ID": sandbox.s3.access_key, "AWS_SECRET_ACCESS_KEY": sandbox.s3.secret_key}
    common = ["--target", s3_settings.target, "--endpoint-url", sandbox.s3.url]
    runner = CliRunner()
    result = runner.invoke(app, ["backup", "--integration", str(sandbox.integration), *common], env=env)
    assert result.exit_code == 0, result.output
    uri = " ".join(result.output.split()).split("verified backup: ")[1].split()[0]
    assert uri.startswith(f"{s3_settings.target}/{socket.gethostname()}/") and uri.endswith("/manifest.json")
    assert sandbox.s3.secret_key not in result.output

    result = runner.invoke(app, ["drill", *common], env=env)
    assert result.exit_code == 0 and "passed" in result.output, result.output

    with sandbox.mongo() as m:
        before = mongo_snapshot(m)
        m.deviceauth.devices.delete_many({})
    result = runner.invoke(app, ["restore", "--manifest", uri, "--integration", str(sandbox.integration),
                                 "--endpoint-url", sandbox.s3.url, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == before
    result = runner.invoke(app, ["restore", "--manifest", "s3://bucket/not-a-manifest", "--yes"], env=env)
    assert result.exit_code == 1 and "not a backup manifest URI" in result.output


def test_object_lock_retention_keeps_backup_versions_from_deletion(sandbox):
    s3 = sandbox.s3.client()
    bucket = f"locked-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    settings = BackupSettings(target=f"s3://{bucket}/mender", endpoint_url=sandbox.s3.url,
                              access_key_id=sandbox.s3.access_key, secret_access_key=sandbox.s3.secret_key,
                              object_lock_days=1)
    store = settings.open_store()
    first = store.upload_stream("b1/mongo.archive.gz", io.BytesIO(b"dump" * 1000))
    head = s3.head_object(Bucket=bucket, Key="mender/b1/mongo.archive.gz")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    version = s3.list_object_versions(Bucket=bucket, Prefix="mender/b1/")["Versions"][0]["VersionId"]
    assert first.version_id == version
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key="mender/b1/mongo.archive.gz", VersionId=version)
    # A later upload to the same key does not change what is read back by the verified version.
    store.upload_stream("b1/mongo.archive.gz", io.BytesIO(b"forged"))
    assert b"".join(store.read_chunks("b1/mongo.archive.gz", first.version_id)) == b"dump" * 1000
    with store.pinned("b1/mongo.archive.gz", first.version_id) as chunks:
        assert b"".join(chunks()) == b"dump" * 1000
    # backup.immutable accepts this bucket (the refusal of a plain one is a fault-matrix case)...
    BackupSettings.model_validate(settings.model_dump() | {"immutable": True}).open_store().probe()
    # ...but not without a retention period (none set here, none by default on the bucket).
    no_retention = settings.model_dump() | {"immutable": True, "object_lock_days": None}
    with pytest.raises(BucketNotImmutable, match="no default retention"):
        BackupSettings.model_validate(no_retention).open_store().probe()
    compliance = BackupSettings.model_validate(settings.model_dump() | {"object_lock_mode": "COMPLIANCE"}).open_store()
    compliance.upload_stream("b2/mongo.archive.gz", io.BytesIO(b"dump"))
    assert s3.head_object(Bucket=bucket, Key="mender/b2/mongo.archive.gz")["ObjectLockMode"] == "COMPLIANCE"
