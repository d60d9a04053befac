"""Restore a verified backup into production, or into throw-away containers (the drill).

Both read the objects straight from the target; each object's SHA-256 is recomputed on the
way and must equal the manifest's, and volume archives are checked entry by entry (no
absolute paths, no `..`) before anything is overwritten.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker

from tasks import mongo as mongo_mod
from tasks.backup import BackupObject, Manifest
from tasks.containers import PROJECT, run_compose, running_services, wait_until_healthy
from tasks.errors import UpgradeError
from tasks.store import BackupStore, ChecksumMismatch, Progress
from tasks.volumes import HELPER_LABEL, MOUNT_ROOT, IterStream, digest_tar, helper_container, restore_volume

DRILL_LABEL = "org.mender-upgrade.drill"


class RestoreFailed(UpgradeError):
    """The restore did not reproduce the backup."""


class _HashingChunks:
    """Chunks of an object, hashed as they pass; `check()` compares with the manifest."""

    def __init__(self, store: BackupStore, obj: BackupObject, progress: Progress | None) -> None:
        self.obj, self.sha, self.size = obj, hashlib.sha256(), 0
        self._chunks = store.read_chunks(obj.key)
        self._progress = progress

    def __iter__(self):
        for chunk in self._chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            if self._progress:
                self._progress(len(chunk))
            yield chunk

    def check(self) -> None:
        if (self.size, self.sha.hexdigest()) != (self.obj.size, self.obj.sha256):
            raise ChecksumMismatch(f"{self.obj.key} read back differs from the manifest "
                                   f"({self.size} bytes vs {self.obj.size})", "this backup cannot be restored")


def check_archives(store: BackupStore, manifest: Manifest, progress: Progress | None = None) -> None:
    """Before overwriting anything: every object matches its checksum, every tar is safe."""
    if not manifest.verified:
        raise RestoreFailed(f"backup {manifest.backup_id} was never verified", "restore a verified backup")
    for obj in manifest.objects:
        chunks = _HashingChunks(store, obj, progress)
        if obj.kind == "volume":
            digest_tar(IterStream(iter(chunks)), volume=obj.name)
        else:
            for _ in chunks:
                pass
        chunks.check()


def mongorestore_from_store(container_id: str, store: BackupStore, obj: BackupObject,
                            progress: Progress | None = None) -> None:
    """Feed the archive object into `mongorestore --archive --gzip --drop` in the container."""
    proc = subprocess.Popen(["docker", "exec", "-i", container_id, "mongorestore", "--archive", "--gzip",
                             "--drop", "--quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    chunks = _HashingChunks(store, obj, progress)
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # mongorestore stopped reading: its exit code and stderr say why
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RestoreFailed(f"mongorestore exited {proc.returncode}: {stderr.strip()[-400:]}",
                            "the database may be partly restored; run the restore again")
    chunks.check()


def restore_volume_object(client: docker.DockerClient, image: str, store: BackupStore, obj: BackupObject,
                          volume: str | None = None, progress: Progress | None = None) -> None:
    chunks = _HashingChunks(store, obj, progress)
    with IterStream(iter(chunks)) as stream:
        restore_volume(client, image, volume or obj.name, stream, archive_root=obj.name)
    chunks.check()


def compare_counts(expected: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]) -> list[str]:
    """Human-readable differences between two per-collection count maps."""
    diffs = []
    for db in sorted(set(expected) | set(actual)):
        for coll in sorted(set(expected.get(db, {})) | set(actual.get(db, {}))):
            a, b = expected.get(db, {}).get(coll), actual.get(db, {}).get(coll)
            if a != b:
                diffs.append(f"{db}.{coll}: backup {a}, now {b}")
    return diffs


def drop_newer_than_backup(client, counts: dict[str, dict[str, int]]) -> list[str]:
    """Drop databases and collections the backup does not have (made by a newer release's
    migrations): `mongorestore --drop` only replaces what the archive holds."""
    dropped = []
    for db_name in client.list_database_names():
        if db_name in mongo_mod.SYSTEM_DATABASES:
            continue
        if db_name not in counts:
            client.drop_database(db_name)
            dropped.append(db_name)
            continue
        for coll in client[db_name].list_collection_names():
            if coll not in counts[db_name]:
                client[db_name].drop_collection(coll)
                dropped.append(f"{db_name}.{coll}")
    return dropped


def restore_backup(client: docker.DockerClient, integration: Path, store: BackupStore, manifest: Manifest, *,
                   project: str = PROJECT, health_timeout: float = 300, stability_window: float = 5,
                   log: Callable[[str], None] = print, progress: Progress | None = None) -> None:
    """Put production back to the backup: database, volumes, then services healthy again."""
    log(f"checking backup {manifest.backup_id} before touching anything")
    check_archives(store, manifest)
    mongo = mongo_mod.mongo_container(client, project)
    image = mongo.attrs["Config"]["Image"]
    others = [s for s in running_services(client, integration, project) if s != mongo_mod.MONGO_SERVICE]
    log(f"stopping {', '.join(others)}")
    run_compose(integration, ["stop", *others])
    try:
        with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as m:
            for name in drop_newer_than_backup(m, manifest.counts):
                log(f"dropped {name}: created after the backup")
        for obj in manifest.objects:
            log(f"restoring {obj.kind} {obj.name}")
            if obj.kind == "mongo":
                mongorestore_from_store(mongo.id, store, obj, progress)
            else:
                restore_volume_object(client, image, store, obj, progress=progress)
    finally:
        log("starting the services again")
        run_compose(integration, ["start", *others])
    with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as m:
        diffs = compare_counts(manifest.counts, mongo_mod.collection_counts(m))
    if diffs:
        raise RestoreFailed("restored database differs from the backup: " + "; ".join(diffs[:10]),
                            "run the restore again; if it persists, restore by hand from the objects")
    wait_until_healthy(client, others + [mongo_mod.MONGO_SERVICE], project=project,
                       timeout=health_timeout, stability_window=stability_window)
    log(f"restored backup {manifest.backup_id}; document counts match")


@dataclass
class DrillReport:
    backup_id: str
    collections_checked: int
    files_checked: int
    differences: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences


def restore_drill(client: docker.DockerClient, store: BackupStore, manifest: Manifest, image: str,
                  log: Callable[[str], None] = print) -> DrillReport:
    """Restore into a throw-away mongo container and scratch volumes; production is untouched."""
    check_archives(store, manifest)
    tag = uuid.uuid4().hex[:8]
    report = DrillReport(manifest.backup_id, 0, 0)
    scratch = {o.name: f"mender-upgrade-drill-{tag}-{o.name}" for o in manifest.objects if o.kind == "volume"}
    labels = {DRILL_LABEL: tag, HELPER_LABEL: "drill"}
    for name in scratch.values():
        client.volumes.create(name, labels=labels)
    container = client.containers.run(image, detach=True, labels=labels)
    try:
        container.reload()
        address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        mongo_mod.wait_for_mongo(f"mongodb://{address}:27017/")
        for obj in manifest.objects:
            if obj.kind == "mongo":
                log("drill: restoring the database into a throw-away container")
                mongorestore_from_store(container.id, store, obj)
                with mongo_mod.connect(f"mongodb://{address}:27017/") as m:
                    actual = mongo_mod.collection_counts(m)
                report.collections_checked = sum(len(c) for c in manifest.counts.values())
                report.differences += compare_counts(manifest.counts, actual)
            else:
                log(f"drill: restoring volume {obj.name} into {scratch[obj.name]}")
                restore_volume_object(client, image, store, obj, volume=scratch[obj.name])
                expected = digest_tar(IterStream(store.read_chunks(obj.key)))
                restored = _digest_volume(client, image, scratch[obj.name], obj.name)
                report.files_checked += len(expected.files)
                for path in sorted(set(expected.files) | set(restored.files)):
                    if expected.files.get(path) != restored.files.get(path):
                        report.differences.append(f"{path}: backup {expected.files.get(path)}, restored {restored.files.get(path)}")
    finally:
        container.remove(force=True, v=True)
        for name in scratch.values():
            client.volumes.get(name).remove(force=True)
    return report


def _digest_volume(client: docker.DockerClient, image: str, volume: str, archive_root: str):
    with helper_container(client, image, {volume: f"{MOUNT_ROOT}/{archive_root}"}, read_only=True) as c:
        chunks, _ = c.get_archive(f"{MOUNT_ROOT}/{archive_root}", chunk_size=1024 * 1024)
        return digest_tar(IterStream(iter(chunks)))
