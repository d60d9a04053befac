"""Restore a verified backup into production, or into throw-away containers (the drill).

Before anything is stopped, every object is pinned (its S3 version, or an open file / a private
local copy) and checked: its SHA-256 must equal the (signed) manifest's and every volume archive
entry must be safe (no absolute paths, `..`, devices or FIFOs, no link leaving the volume). What
is then applied is that very pinned object, hashed once more on the way. Volume names must be
data volumes of this installation; mongod's data volume is never touched (mongorestore restores
the database).
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import docker

from mender_upgrade.tasks import mongo as mongo_mod
from mender_upgrade.tasks.backup import VOLUME, VOLUME_DELTA, BackupObject, Manifest, OtherHostsBackup, backed_up_volumes
from mender_upgrade.tasks.containers import PROJECT, run_compose, running_services, start_services, wait_until_healthy
from mender_upgrade.tasks.delta import merge_digest
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.store import BackupStore, ChecksumMismatch, Progress
from mender_upgrade.tasks.volumes import (HELPER_LABEL, MOUNT_ROOT, InstallationVolumes, IterStream, TarDigest, check_removed_path,
                           digest_tar, helper_container, restore_volume)

Chunks = Callable[[], Iterator[bytes]]

DRILL_LABEL = "org.mender-upgrade.drill"


class RestoreFailed(UpgradeError):
    """The restore did not reproduce the backup."""


class _HashingChunks:
    """Chunks of an object, hashed as they pass; `check()` compares with the manifest."""

    def __init__(self, chunks: Iterator[bytes], obj: BackupObject, progress: Progress | None) -> None:
        self.obj, self.sha, self.size = obj, hashlib.sha256(), 0
        self._chunks = chunks
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


def require_this_host(manifest: Manifest, host_id: str, allow_other_host: bool = False) -> None:
    """A backup of another host is restored only when the operator asks for it explicitly."""
    if manifest.host_id != host_id and not allow_other_host:
        raise OtherHostsBackup(f"backup {manifest.backup_id} was made on host {manifest.host_id or '(unnamed)'!r}, "
                               f"this is {host_id!r}", "restore a backup of this host, or pass --other-host if "
                               "you mean to move that host's data here; nothing was changed")


@contextmanager
def pinned_objects(store: BackupStore, manifest: Manifest, progress: Progress | None = None) -> Iterator[dict[str, Chunks]]:
    """Pin every object of `manifest` and check it (checksum, safe archive) before anything is
    changed; yields key -> chunks of that very pinned object."""
    if not manifest.verified:
        raise RestoreFailed(f"backup {manifest.backup_id} was never verified", "restore a verified backup")
    with ExitStack() as stack:
        pins = {obj.key: stack.enter_context(store.pinned(obj.key, obj.version_id)) for obj in manifest.objects}
        for obj in manifest.objects:
            chunks = _HashingChunks(pins[obj.key](), obj, progress)
            for path in obj.removed or []:
                check_removed_path(path)
            if obj.kind in (VOLUME, VOLUME_DELTA):
                digest_tar(IterStream(iter(chunks)), volume=obj.name)
            else:
                for _ in chunks:
                    pass
            chunks.check()
        yield pins


def check_archives(store: BackupStore, manifest: Manifest, progress: Progress | None = None) -> None:
    """Every object matches its checksum, every tar is safe (a check on its own)."""
    with pinned_objects(store, manifest, progress):
        pass


def mongorestore_from_store(container_id: str, chunks: Iterator[bytes], obj: BackupObject,
                            progress: Progress | None = None) -> None:
    """Feed the archive object into `mongorestore --archive --gzip --drop` in the container."""
    proc = subprocess.Popen(["docker", "exec", "-i", container_id, "mongorestore", "--archive", "--gzip",
                             "--drop", "--quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None  # both are pipes
    hashing = _HashingChunks(chunks, obj, progress)
    try:
        for chunk in hashing:
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # mongorestore stopped reading: its exit code and stderr say why
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RestoreFailed(f"mongorestore exited {proc.returncode}: {stderr.strip()[-400:]}",
                            "the database may be partly restored; run the restore again")
    hashing.check()


def restore_volume_object(client: docker.DockerClient, image: str, chunks: Iterator[bytes], obj: BackupObject,
                          volume: str | None = None, progress: Progress | None = None) -> None:
    """A full archive replaces the volume's content; a delta (applied after its base) removes
    its removed paths, then writes its entries."""
    hashing = _HashingChunks(chunks, obj, progress)
    with IterStream(iter(hashing)) as stream:
        restore_volume(client, image, volume or obj.name, stream, archive_root=obj.name,
                       removed=(obj.removed or []) if obj.kind == VOLUME_DELTA else None)
    hashing.check()


def volumes_to_restore(manifest: Manifest, volumes: InstallationVolumes,
                       log: Callable[[str], None]) -> list[BackupObject]:
    """The manifest's volume objects to restore: each a data volume of this installation
    (else refused); mongod's data volume is skipped (mongorestore restores the database)."""
    chosen = []
    for obj in manifest.objects:
        if obj.kind not in (VOLUME, VOLUME_DELTA):
            continue
        if obj.name in volumes.mongo_data:
            log(f"skipping volume {obj.name}: it is mongod's data directory; the database is restored by mongorestore")
            continue
        volumes.require_restorable(obj.name)
        chosen.append(obj)
    return chosen


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
                   host_id: str, allow_other_host: bool = False,
                   project: str = PROJECT, health_timeout: float = 300, stability_window: float = 5,
                   log: Callable[[str], None] = print, progress: Progress | None = None,
                   pins: dict[str, Chunks] | None = None) -> None:
    """Put production back to the backup: database, volumes, then services healthy again.
    `pins`: the objects as already pinned and checked by the caller (`pinned_objects`)."""
    require_this_host(manifest, host_id, allow_other_host)
    volume_objects = volumes_to_restore(manifest, backed_up_volumes(client, integration, project), log)
    with ExitStack() as stack:
        if pins is None:
            log(f"checking backup {manifest.backup_id} before touching anything")
            pins = stack.enter_context(pinned_objects(store, manifest))
        mongo = mongo_mod.mongo_container(client, project)
        image = mongo.attrs["Config"]["Image"]
        others = [s for s in running_services(client, integration, project) if s != mongo_mod.MONGO_SERVICE]
        log(f"stopping {', '.join(others)}")
        run_compose(integration, ["stop", *others])
        try:
            with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as m:
                for name in drop_newer_than_backup(m, manifest.counts):
                    log(f"dropped {name}: created after the backup")
            for obj in [o for o in manifest.objects if o.kind == "mongo"] + volume_objects:
                log(f"restoring {obj.kind} {obj.name}")
                if obj.kind == "mongo":
                    mongorestore_from_store(mongo.id, pins[obj.key](), obj, progress)
                else:
                    restore_volume_object(client, image, pins[obj.key](), obj, progress=progress)
        finally:
            log("starting the services again")
            # Not `./run start`: it waits for minio's first health check after its restart, a
            # minute on the 2.x images; the gate below waits for what matters.
            start_services(integration, others)
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


def restore_drill(client: docker.DockerClient, store: BackupStore, manifest: Manifest, image: str, *,
                  host_id: str, allow_other_host: bool = False, log: Callable[[str], None] = print) -> DrillReport:
    """Restore into a throw-away mongo container and scratch volumes; production is untouched."""
    require_this_host(manifest, host_id, allow_other_host)
    with pinned_objects(store, manifest) as pins:
        return _drill(client, pins, manifest, image, log)


def _drill(client: docker.DockerClient, pins: dict[str, Chunks], manifest: Manifest, image: str,
           log: Callable[[str], None]) -> DrillReport:
    tag = uuid.uuid4().hex[:8]
    report = DrillReport(manifest.backup_id, 0, 0)
    scratch = {o.name: f"mender-upgrade-drill-{tag}-{o.name}" for o in manifest.objects if o.kind == VOLUME}
    expected: dict[str, TarDigest] = {}  # volume -> what it holds once its base and deltas are restored
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
                mongorestore_from_store(container.id, pins[obj.key](), obj)
                with mongo_mod.connect(f"mongodb://{address}:27017/") as m:
                    actual = mongo_mod.collection_counts(m)
                report.collections_checked = sum(len(c) for c in manifest.counts.values())
                report.differences += compare_counts(manifest.counts, actual)
            else:
                log(f"drill: restoring volume {obj.name} into {scratch[obj.name]}")
                restore_volume_object(client, image, pins[obj.key](), obj, volume=scratch[obj.name])
                digest = digest_tar(IterStream(pins[obj.key]()), volume=obj.name)
                expected[obj.name] = (merge_digest(expected[obj.name], digest, obj.name, obj.removed or [])
                                      if obj.kind == VOLUME_DELTA else digest)
        for name, digest in expected.items():
            restored = _digest_volume(client, image, scratch[name], name)
            report.files_checked += len(digest.files)
            for path in sorted(set(digest.files) | set(restored.files)):
                if digest.files.get(path) != restored.files.get(path):
                    report.differences.append(f"{path}: backup {digest.files.get(path)}, restored {restored.files.get(path)}")
    finally:
        container.remove(force=True, v=True)
        for name in scratch.values():
            client.volumes.get(name).remove(force=True)
    return report


def _digest_volume(client: docker.DockerClient, image: str, volume: str, archive_root: str):
    with helper_container(client, image, {volume: f"{MOUNT_ROOT}/{archive_root}"}, read_only=True) as c:
        chunks, _ = c.get_archive(f"{MOUNT_ROOT}/{archive_root}", chunk_size=1024 * 1024)
        return digest_tar(IterStream(iter(chunks)))
