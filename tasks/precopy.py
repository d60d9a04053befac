"""A backup in two parts, so the writers stop only for what changed: a hot pre-copy of every
volume while the server serves, then, in the quiet period, the database dump and one delta
archive per volume.

Pre-copy: a listing of each volume (GNU find in a helper container on the mongo image), then
its full archive (Docker's archive API, as `create_backup`), read back and verified at once; an
unverified manifest records the objects so a run that dies here leaves nothing prune cannot
find. Quiet period (writers stopped by the caller): mongodump, a second listing, and per volume
a tar (GNU tar, `--no-recursion`) of just the new and changed paths, with the removed ones in
the (signed) manifest; only these new objects are read back. Restore = base, removals, delta
(`tasks/restore.py`).
"""

from __future__ import annotations

import io
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import docker

from mender_upgrade.tasks import mongo as mongo_mod
from mender_upgrade.tasks.backup import (MONGO_OBJECT, VOLUME, VOLUME_DELTA, BackupFailed, BackupObject, Manifest, _now,
                          _repo_facts, backed_up_volumes, clear_leftovers, dump_mongo_to_store, list_backups, mark_in_use,
                          new_backup_id, prune_backups, stream_volume_to_store, verify_backup, verify_objects,
                          volume_key)
from mender_upgrade.tasks.containers import PROJECT, project_states
from mender_upgrade.tasks.delta import LISTING_FORMAT, Listing, VolumeDelta, compare_listings, parse_listing
from mender_upgrade.tasks.store import BackupStore, Progress
from mender_upgrade.tasks.volumes import HELPER_LABEL, MOUNT_ROOT, IterStream

LISTING_FILE = "/tmp/mender-upgrade-listing"
DELTA_LIST_FILE = "/tmp/mender-upgrade-delta.list"
DELTA_FILE = "/tmp/mender-upgrade-delta.tar"
CHUNK = 1024 * 1024


class VolumeToolFailed(BackupFailed):
    """find or tar in a volume helper container exited with an error."""


@contextmanager
def _tool_container(client: docker.DockerClient, image: str, volume: str, argv: list[str],
                    inputs: dict[str, bytes] | None = None, ok_codes: tuple[int, ...] = (0,)):
    """Run `argv` (no shell) in a helper container with `volume` mounted read-only at
    MOUNT_ROOT/<volume>; yields the exited container so its output files can be read."""
    container = client.containers.create(  # as root: every file of the volume must be readable
        image, entrypoint=[argv[0]], command=argv[1:], user="0:0", labels={HELPER_LABEL: "volume"}, network_mode="none",
        volumes={volume: {"bind": f"{MOUNT_ROOT}/{volume}", "mode": "ro"}})
    try:
        for path, data in (inputs or {}).items():
            container.put_archive(str(Path(path).parent), _one_file_tar(Path(path).name, data))
        container.start()
        code = container.wait().get("StatusCode", -1)
        if code not in ok_codes:
            tail = container.logs(stdout=False, stderr=True).decode(errors="replace").strip()[-400:]
            raise VolumeToolFailed(f"`{argv[0]}` on volume {volume} exited {code}: {tail}",
                                   "check the volume and the mongo image (it needs GNU find and tar); "
                                   "the old version keeps running")
        yield container
    finally:
        container.remove(force=True, v=True)  # with it the anonymous volumes of the image's VOLUMEs (mongo: 2)


def _one_file_tar(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _file_chunks(container, path: str) -> Iterator[bytes]:
    """The content of one file of the container (Docker's archive API wraps it in a tar)."""
    chunks, _ = container.get_archive(path, chunk_size=CHUNK)
    with tarfile.open(fileobj=IterStream(iter(chunks)), mode="r|") as tar:
        member = tar.next()
        data = tar.extractfile(member) if member is not None else None
        if data is None:
            raise VolumeToolFailed(f"{path} in the helper container is not a file", "this is a bug")
        while chunk := data.read(CHUNK):
            yield chunk


def volume_listing(client: docker.DockerClient, image: str, volume: str) -> Listing:
    """Every entry below the volume root (`find -fprintf`: a file, so names stay bytes)."""
    argv = ["find", f"{MOUNT_ROOT}/{volume}", "-mindepth", "1", "-fprintf", LISTING_FILE, LISTING_FORMAT]
    with _tool_container(client, image, volume, argv) as container:
        return parse_listing(b"".join(_file_chunks(container, LISTING_FILE)))


def delta_chunks(client: docker.DockerClient, image: str, volume: str, delta: VolumeDelta) -> Iterator[bytes]:
    """A tar of the delta's changed paths only, entries `<volume>/<path>` like the base archive.
    tar exit 1 ("file changed as we read it") is accepted: only storage-internal files change in
    the quiet period, as they do during any hot archive."""
    names = b"".join(f"{volume}/{p}".encode(errors="surrogateescape") + b"\0" for p in delta.changed)
    argv = ["tar", "--create", "--file", DELTA_FILE, "--directory", MOUNT_ROOT, "--no-recursion", "--null",
            "--files-from", DELTA_LIST_FILE, "--numeric-owner", "--format=posix", "--ignore-failed-read"]
    with _tool_container(client, image, volume, argv, {DELTA_LIST_FILE: names}, ok_codes=(0, 1)) as container:
        yield from _file_chunks(container, DELTA_FILE)


@dataclass
class PreCopy:
    """The hot part of a backup: base archives written and verified, and what they saw."""
    manifest: Manifest                     # unverified: base objects only
    listings: dict[str, Listing]           # volume -> listing taken before its archive
    image: str
    seconds: float
    bytes: int
    previous_dump_bytes: int | None = None  # the size of this host's newest verified dump, if any

    @property
    def rate(self) -> float:
        """Archive throughput of the pre-copy, bytes/s."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def pre_copy(client: docker.DockerClient, integration: Path, store: BackupStore, run_id: str, *,
             project: str = PROJECT, holds_lock: bool = False, log: Callable[[str], None] = print,
             progress: Progress | None = None) -> PreCopy:
    """Archive every data volume while the server serves; verify each archive."""
    store.probe()
    if holds_lock:
        clear_leftovers(client, store, log)
    verified = [m for m in list_backups(store) if m.verified]
    previous_dump = next((o.size for o in verified[-1].objects if o.kind == "mongo"), None) if verified else None
    start = time.monotonic()
    container = mongo_mod.mongo_container(client, project)
    image = container.attrs["Config"]["Image"]
    version, sha = _repo_facts(integration)
    with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as mongo:
        info = mongo_mod.server_info(mongo)
    manifest = Manifest(backup_id=new_backup_id(run_id), run_id=run_id, created_utc=_now(), mode="pre-copy+delta",
                        integration_version=version, git_sha=sha,
                        image_digests={s: client.images.get(st.image).id for s, st in project_states(client, project).items()},
                        mongo_version=info.version, feature_compatibility_version=info.feature_compatibility_version,
                        counts={}, target=store.uri, host_id=store.host_id)
    listings: dict[str, Listing] = {}
    for volume in backed_up_volumes(client, integration, project).archived:
        # The listing comes first: whatever changes during the archive differs from it.
        listings[volume] = volume_listing(client, image, volume)
        log(f"pre-copy of volume {volume} while the server serves")
        r = stream_volume_to_store(client, image, volume, store, volume_key(manifest.backup_id, volume), progress)
        obj = BackupObject(r.key, VOLUME, volume, r.size, r.sha256, "none",
                           getattr(store, "server_side_encryption", None), r.version_id)
        verify_objects(store, [obj], progress)
        manifest.objects.append(obj)
        store.put_bytes(manifest.key, manifest.to_json(store.signing_key))  # unverified: prune finds it
    return PreCopy(manifest, listings, image, time.monotonic() - start, sum(o.size for o in manifest.objects),
                   previous_dump)


@dataclass
class QuietBackup:
    manifest: Manifest                                       # verified: base + mongo + deltas
    seconds: dict[str, float] = field(default_factory=dict)  # dump, delta
    changed: dict[str, int] = field(default_factory=dict)    # volume -> changed + removed paths


def finish_backup(client: docker.DockerClient, integration: Path, store: BackupStore, pre: PreCopy, *,
                  project: str = PROJECT, keep_last: int = 5, holds_lock: bool = False,
                  log: Callable[[str], None] = print, progress: Progress | None = None) -> QuietBackup:
    """In the quiet period (writers stopped by the caller): dump, per-volume deltas, verify the
    new objects, mark the backup in use and prune. A volume that appeared after the pre-copy is
    archived whole."""
    manifest, out = pre.manifest, QuietBackup(pre.manifest)
    encryption = getattr(store, "server_side_encryption", None)
    new: list[BackupObject] = []
    t = time.monotonic()
    container = mongo_mod.mongo_container(client, project)
    with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as mongo:
        info = mongo_mod.server_info(mongo)
        manifest.counts = mongo_mod.collection_counts(mongo)
    manifest.mongo_version, manifest.feature_compatibility_version = info.version, info.feature_compatibility_version
    log(f"dumping MongoDB {info.version} into {store.uri}/{manifest.backup_id}")
    r = dump_mongo_to_store(container.id, store, f"{manifest.backup_id}/{MONGO_OBJECT}", progress)
    new.append(BackupObject(r.key, "mongo", mongo_mod.MONGO_SERVICE, r.size, r.sha256, "gzip", encryption, r.version_id))
    verify_objects(store, new[-1:], progress)
    out.seconds["dump"] = time.monotonic() - t
    t = time.monotonic()
    for volume in backed_up_volumes(client, integration, project).archived:
        if volume not in pre.listings:
            log(f"volume {volume} appeared after the pre-copy: archiving it whole")
            r = stream_volume_to_store(client, pre.image, volume, store, volume_key(manifest.backup_id, volume), progress)
            new.append(BackupObject(r.key, VOLUME, volume, r.size, r.sha256, "none", encryption, r.version_id))
            continue
        delta = compare_listings(pre.listings[volume], volume_listing(client, pre.image, volume))
        out.changed[volume] = len(delta.changed) + len(delta.removed)
        log(f"volume {volume}: {len(delta.changed)} path(s) new or changed, {len(delta.removed)} removed since the pre-copy")
        if delta.empty:
            continue
        with IterStream(delta_chunks(client, pre.image, volume, delta)) as stream:
            r = store.upload_stream(volume_key(manifest.backup_id, volume, delta=True), stream, progress)
        new.append(BackupObject(r.key, VOLUME_DELTA, volume, r.size, r.sha256, "none", encryption, r.version_id,
                                removed=delta.removed))
    manifest.objects += new
    verify_backup(store, manifest, progress, only=[o for o in new if o.kind != "mongo"])
    out.seconds["delta"] = time.monotonic() - t
    log(f"backup {manifest.backup_id} verified ({len(manifest.objects)} objects)")
    if holds_lock:
        mark_in_use(store, manifest.run_id, manifest.backup_id)
    for pruned in prune_backups(store, keep_last):
        log(f"pruned old backup {pruned}")
    return out
