"""Backup, verification, retention and restore of a Mender installation.

A backup is a folder of objects in the target: `mongo.archive.gz` (`mongodump --archive
--gzip` run inside the running mender-mongo container, streamed straight into the upload),
one `volumes/<name>.tar` per external volume of the operator's prod.yml (Docker's archive
API), and `manifest.json`, written last. A backup counts as *verified* only after every object
was read back and its SHA-256 recomputed and matched; only then is the manifest marked.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import docker
import git

from tasks import mongo as mongo_mod
from tasks.containers import PROJECT, project_states, run_compose, running_services
from tasks.errors import UpgradeError
from tasks.store import BackupStore, ChecksumMismatch, ObjectReceipt, Progress, sha256_of_chunks
from tasks.versions import stable_versions
from tasks.volumes import IterStream, external_volumes, remove_stale_helpers, volume_tar_stream

MANIFEST = "manifest.json"
MONGO_OBJECT = "mongo.archive.gz"
# Services that keep running in quiesce mode: the database itself, storage and the edge.
NON_WRITERS = {"mender-mongo", "minio", "mender-api-gateway", "storage-proxy", "mender-nats", "mender-opensearch"}


class BackupFailed(UpgradeError):
    """No verified backup could be made; nothing destructive may follow."""


class DumpFailed(BackupFailed):
    """mongodump exited non-zero; its object was not completed."""


@dataclass
class BackupObject:
    key: str
    kind: str  # "mongo" or "volume"
    name: str
    size: int
    sha256: str
    compression: str
    encryption: str | None


@dataclass
class Manifest:
    backup_id: str
    run_id: str
    created_utc: str
    mode: str
    integration_version: str | None
    git_sha: str | None
    image_digests: dict[str, str]
    mongo_version: str
    feature_compatibility_version: str | None
    counts: dict[str, dict[str, int]]
    objects: list[BackupObject] = field(default_factory=list)
    target: str = ""
    verified_utc: str | None = None

    @property
    def verified(self) -> bool:
        return self.verified_utc is not None

    @property
    def key(self) -> str:
        return f"{self.backup_id}/{MANIFEST}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self) | {"verified": self.verified}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        raw = json.loads(data)
        raw.pop("verified", None)
        raw["objects"] = [BackupObject(**o) for o in raw.get("objects", [])]
        return cls(**raw)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_backup_id(run_id: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + run_id[:8]


class ExecStream(IterStream):
    """stdout of `docker exec` as a file; at EOF the exit code is checked, so a failed
    mongodump raises before its upload can complete."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        super().__init__(iter(lambda: self.proc.stdout.read(1024 * 1024), b""))

    def readinto(self, target) -> int:
        n = super().readinto(target)
        if n == 0:
            stderr = self.proc.stderr.read().decode(errors="replace")
            if self.proc.wait() != 0:
                tail = "\n".join(stderr.strip().splitlines()[-5:])
                raise DumpFailed(f"`{' '.join(self.proc.args[3:])}` exited {self.proc.returncode}: {tail}",
                                 "check that mender-mongo is healthy; no backup object was completed")
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        super().close()


def dump_mongo_to_store(container_id: str, store: BackupStore, key: str,
                        progress: Progress | None = None) -> ObjectReceipt:
    """`mongodump --archive --gzip` inside the running mongo container, straight into `store`."""
    with ExecStream(["docker", "exec", container_id, "mongodump", "--archive", "--gzip", "--quiet"]) as stream:
        return store.upload_stream(key, stream, progress)


def stream_volume_to_store(client: docker.DockerClient, image: str, volume: str, store: BackupStore,
                           key: str, progress: Progress | None = None) -> ObjectReceipt:
    with IterStream(volume_tar_stream(client, image, volume)) as stream:
        return store.upload_stream(key, stream, progress)


def writer_services(client: docker.DockerClient, integration: Path, project: str = PROJECT) -> list[str]:
    """The API services that write to mongo or the artifact store (stopped in quiesce mode):
    running services of the current configuration, so `./run stop` knows each of them."""
    return [s for s in running_services(client, integration, project) if s not in NON_WRITERS]


@contextmanager
def quiesced(integration: Path, services: list[str], log: Callable[[str], None]) -> Iterator[None]:
    """Stop `services` with the operator's ./run; start them again however the body ends."""
    if not services:
        yield
        return
    log(f"stopping writers for a consistent backup: {', '.join(services)}")
    run_compose(integration, ["stop", *services])
    try:
        yield
    finally:
        log("starting the writers again")
        run_compose(integration, ["start", *services])


def _repo_facts(integration: Path) -> tuple[str | None, str | None]:
    try:
        repo = git.Repo(integration)
        stable = stable_versions(repo.git.tag("--merged", "HEAD").split())
        return (str(stable[-1]) if stable else None), repo.head.commit.hexsha
    except (git.GitError, ValueError):
        return None, None


def create_backup(client: docker.DockerClient, integration: Path, store: BackupStore, run_id: str, *,
                  mode: str = "quiesce", writers: list[str] | None = None, project: str = PROJECT,
                  log: Callable[[str], None] = print, progress: Progress | None = None) -> Manifest:
    """Dump mongo and tar every external volume into `store`; returns the (unverified) manifest."""
    prod_yml = (integration / "production" / "config" / "prod.yml").read_text()
    volumes = external_volumes(prod_yml)
    container = mongo_mod.mongo_container(client, project)
    image = container.attrs["Config"]["Image"]
    states = project_states(client, project)
    digests = {s: client.images.get(st.image).id for s, st in states.items()}
    version, sha = _repo_facts(integration)
    backup_id = new_backup_id(run_id)
    stop = (writers if writers is not None else writer_services(client, integration, project)) if mode == "quiesce" else []
    with mongo_mod.connect(mongo_mod.mongo_url(client, project)) as mongo, quiesced(integration, stop, log):
        info = mongo_mod.server_info(mongo)
        counts = mongo_mod.collection_counts(mongo)
        manifest = Manifest(backup_id=backup_id, run_id=run_id, created_utc=_now(), mode=mode,
                            integration_version=version, git_sha=sha, image_digests=digests,
                            mongo_version=info.version, feature_compatibility_version=info.feature_compatibility_version,
                            counts=counts, target=store.uri)
        encryption = getattr(store, "server_side_encryption", None)
        log(f"dumping MongoDB {info.version} into {store.uri}/{backup_id}")
        r = dump_mongo_to_store(container.id, store, f"{backup_id}/{MONGO_OBJECT}", progress)
        manifest.objects.append(BackupObject(r.key, "mongo", "mender-mongo", r.size, r.sha256, "gzip", encryption))
        for volume in volumes:
            log(f"archiving volume {volume}")
            r = stream_volume_to_store(client, image, volume, store, f"{backup_id}/volumes/{volume}.tar", progress)
            manifest.objects.append(BackupObject(r.key, "volume", volume, r.size, r.sha256, "none", encryption))
    store.put_bytes(manifest.key, manifest.to_json())
    return manifest


def verify_backup(store: BackupStore, manifest: Manifest, progress: Progress | None = None) -> Manifest:
    """Read every object back, recompute SHA-256; mark the manifest verified only if all match."""
    for obj in manifest.objects:
        size, sha = sha256_of_chunks(store.read_chunks(obj.key), progress)
        if (size, sha) != (obj.size, obj.sha256):
            raise ChecksumMismatch(f"{store.uri}/{obj.key} reads back as {size} bytes sha256 {sha[:12]}…, "
                                   f"written as {obj.size} bytes sha256 {obj.sha256[:12]}…",
                                   "the backup is not usable; check the target's health and run a new backup")
    manifest.verified_utc = _now()
    store.put_bytes(manifest.key, manifest.to_json())
    return manifest


def list_backups(store: BackupStore) -> list[Manifest]:
    """Every backup's manifest in the target, oldest first."""
    manifests = [Manifest.from_json(store.get_bytes(k)) for k in store.list_keys("")
                 if k.endswith("/" + MANIFEST) and k.count("/") == 1]
    return sorted(manifests, key=lambda m: m.backup_id)


def newest_verified_backup(store: BackupStore) -> Manifest:
    """The newest verified backup in `store`, or an error saying there is none."""
    verified = [m for m in list_backups(store) if m.verified]
    if not verified:
        raise UpgradeError(f"no verified backup in {store.uri}", "run `mender-upgrade backup` first")
    return verified[-1]


def prune_backups(store: BackupStore, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` verified backups (and unverified ones older than
    the newest verified); the newest verified backup is never deleted."""
    backups = list_backups(store)
    verified = [m for m in backups if m.verified]
    if not verified:
        return []
    keep = {m.backup_id for m in verified[-max(keep_last, 1):]}
    newest = verified[-1].backup_id
    doomed = [m.backup_id for m in backups if m.backup_id not in keep and m.backup_id < newest]
    for backup_id in doomed:
        store.delete_keys(store.list_keys(backup_id + "/"))
    return doomed


def ensure_verified_backup(client: docker.DockerClient, integration: Path, store: BackupStore, *,
                           run_id: str | None = None, mode: str = "quiesce", keep_last: int = 5,
                           writers: list[str] | None = None, project: str = PROJECT,
                           log: Callable[[str], None] = print, progress: Progress | None = None) -> Manifest:
    """Give me a verified backup or raise: probe, back up, verify, then prune old ones."""
    store.probe()  # fails before anything is stopped when the target is unreachable or denies us
    for key in store.abort_stale_uploads():
        log(f"removed an unfinished upload of {key} (left by a run that was killed)")
    for name in remove_stale_helpers(client):
        log(f"removed the volume helper container {name} (left by a run that was killed)")
    manifest = create_backup(client, integration, store, run_id or uuid.uuid4().hex, mode=mode,
                             writers=writers, project=project, log=log, progress=progress)
    manifest = verify_backup(store, manifest, progress)
    log(f"backup {manifest.backup_id} verified ({len(manifest.objects)} objects)")
    for pruned in prune_backups(store, keep_last):
        log(f"pruned old backup {pruned}")
    return manifest
