"""Backup, verification, retention and restore of a Mender installation.

A backup is a folder of objects in this host's namespace of the target (`<target>/<host_id>/`):
`mongo.archive.gz` (`mongodump --archive --gzip` run inside the running mender-mongo container,
streamed straight into the upload), one `volumes/<name>.tar` per named volume the services
mount (Docker's archive API) except mongod's data directory (its files change under the
running server; the dump covers the database), and `manifest.json`, written last. A backup
counts as *verified* only after every object was read back (by its S3 version) and its SHA-256
recomputed and matched; only then is the manifest marked.

Whoever can write to the target can forge a manifest, so every manifest carries an
HMAC-SHA256 made with a key kept outside the target (`backup.signing_key_file`, created 0600
on first use); a manifest that is unsigned, mis-signed or malformed is refused.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import docker
import git

from mender_upgrade.tasks import mongo as mongo_mod
from mender_upgrade.tasks.containers import PROJECT, project_states, run_compose, running_services
from mender_upgrade.tasks.errors import UpgradeError, also_failed
from mender_upgrade.tasks.store import BackupStore, ChecksumMismatch, ObjectReceipt, Progress, sha256_of_chunks
from mender_upgrade.tasks.versions import stable_versions
from mender_upgrade.tasks.volumes import (VOLUME_NAME, IterStream, InstallationVolumes, external_volumes, installation_volumes,
                           remove_stale_helpers, volume_tar_stream)

MANIFEST = "manifest.json"
MONGO_OBJECT = "mongo.archive.gz"
IN_USE = "in-use"  # in-use/<run id>: the backup a run's rollback depends on (never pruned)
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9-]{1,36}$")
SIGNATURE_PREFIX = "hmac-sha256:"
VOLUME, VOLUME_DELTA = "volume", "volume-delta"  # a volume's full archive; what changed since it (tasks/precopy.py)
# Services that keep running in quiesce mode: the database itself, storage and the edge.
NON_WRITERS = {"mender-mongo", "minio", "mender-api-gateway", "storage-proxy", "mender-nats", "mender-opensearch"}


class BackupFailed(UpgradeError):
    """No verified backup could be made; nothing destructive may follow."""


class DumpFailed(BackupFailed):
    """mongodump exited non-zero; its object was not completed."""


class ManifestUntrusted(UpgradeError):
    """A manifest is unsigned, mis-signed or malformed: it may be forged."""


class OtherHostsBackup(UpgradeError):
    """The backup belongs to another host."""


class SigningKeyUnusable(UpgradeError):
    """The manifest signing key file is missing its protection or unreadable."""


@dataclass
class BackupObject:
    key: str
    kind: str  # "mongo" or "volume"
    name: str
    size: int
    sha256: str
    compression: str
    encryption: str | None
    version_id: str | None = None  # S3 version written and verified: restores read exactly this
    removed: list[str] | None = None  # a volume delta's paths (below the volume root) gone since its base


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
    host_id: str = ""

    @property
    def verified(self) -> bool:
        return self.verified_utc is not None

    @property
    def key(self) -> str:
        return f"{self.backup_id}/{MANIFEST}"

    def _body(self) -> dict:
        return asdict(self) | {"verified": self.verified}

    def to_json(self, signing_key: bytes) -> bytes:
        """The manifest with its HMAC-SHA256 over the canonical JSON of everything else."""
        body = self._body()
        return json.dumps(body | {"signature": _sign(body, signing_key)}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, signing_key: bytes, allow_unsigned: bool = False, where: str = "") -> "Manifest":
        """Parse and check a manifest read from the target (untrusted): signature, backup id,
        object keys and volume names. `allow_unsigned` (an operator's explicit override)
        accepts a missing or wrong signature, never malformed content."""
        where = where or "the manifest"
        try:
            raw = json.loads(data)
            signature = raw.pop("signature", None)
            body = dict(raw)
            raw.pop("verified", None)
            raw["objects"] = [BackupObject(**o) for o in raw.get("objects", [])]
            manifest = cls(**raw)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ManifestUntrusted(f"{where} is not a mender-upgrade manifest: {exc}",
                                    "restore a backup written by mender-upgrade; nothing was changed") from None
        if not allow_unsigned:
            if not signature:
                raise ManifestUntrusted(f"{where} is not signed",
                                        "if you wrote it yourself and checked it, pass --allow-unsigned; "
                                        "nothing was changed")
            if not hmac.compare_digest(str(signature), _sign(body, signing_key)):
                raise ManifestUntrusted(f"{where} has a signature that does not match the signing key",
                                        "it was changed after it was written, or signed with another host's key "
                                        "(backup.signing_key_file); nothing was changed")
        manifest._check_shape(where)
        return manifest

    def _check_shape(self, where: str) -> None:
        def bad(what: str) -> ManifestUntrusted:
            return ManifestUntrusted(f"{where}: {what}", "this manifest was not written by mender-upgrade; "
                                     "nothing was changed")
        if not BACKUP_ID.match(str(self.backup_id)):
            raise bad(f"backup id {self.backup_id!r} is not of the form 20261129T230000Z-<run>")
        for obj in self.objects:
            if obj.kind == "mongo":
                expected = f"{self.backup_id}/{MONGO_OBJECT}"
            elif obj.kind in (VOLUME, VOLUME_DELTA):
                if not VOLUME_NAME.match(str(obj.name)):
                    raise bad(f"volume name {obj.name!r} is not a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)")
                expected = volume_key(self.backup_id, obj.name, delta=obj.kind == VOLUME_DELTA)
            else:
                raise bad(f"object kind {obj.kind!r} is neither mongo nor volume nor volume-delta")
            if obj.removed is not None and (obj.kind != VOLUME_DELTA or not isinstance(obj.removed, list)
                                            or not all(isinstance(p, str) for p in obj.removed)):
                raise bad(f"object {obj.key!r} has a removal list but is not a volume delta, or the list is not strings")
            if obj.key != expected:
                raise bad(f"object key {obj.key!r} should be {expected!r}")
            if not isinstance(obj.size, int) or not re.fullmatch(r"[0-9a-f]{64}", str(obj.sha256)):
                raise bad(f"object {obj.key!r} has no valid size and SHA-256")


def volume_key(backup_id: str, volume: str, delta: bool = False) -> str:
    return f"{backup_id}/volumes/{volume}{'.delta' if delta else ''}.tar"


def _sign(body: dict, key: bytes) -> str:
    if not key:
        raise SigningKeyUnusable("no manifest signing key is loaded", "this is a bug: open the store from settings")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return SIGNATURE_PREFIX + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def load_signing_key(path: Path) -> bytes:
    """The manifest signing key in `path`, created (32 random bytes, hex, mode 0600, folder
    0700) on first use. Keep it off the backup target and back it up on its own."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        why = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise SigningKeyUnusable(f"the manifest signing key file {path} {why}",
                                 "point backup.signing_key_file at a plain file only root can read") from None
    with os.fdopen(fd) as key_file:
        info = os.fstat(key_file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
            raise SigningKeyUnusable(f"the manifest signing key file {path} is readable by others "
                                     f"(mode {stat.S_IMODE(info.st_mode):o})", f"run `chmod 600 {path}`")
        key = key_file.read().strip().encode()
    if len(key) < 32:
        raise SigningKeyUnusable(f"the manifest signing key in {path} is shorter than 32 characters",
                                 "remove the file: a new key is made on the next run (older backups then "
                                 "need --allow-unsigned)")
    return key


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_backup_id(run_id: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + run_id[:8]


class ExecStream(IterStream):
    """stdout of `docker exec` as a file; at EOF the exit code is checked, so a failed
    mongodump raises before its upload can complete."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = self.proc.stdout, self.proc.stderr
        assert stdout is not None and stderr is not None  # both are pipes
        self.stderr = stderr
        super().__init__(iter(lambda: stdout.read(1024 * 1024), b""))

    def readinto(self, target) -> int:
        n = super().readinto(target)
        if n == 0:
            stderr = self.stderr.read().decode(errors="replace")
            if self.proc.wait() != 0:
                tail = "\n".join(stderr.strip().splitlines()[-5:])
                raise DumpFailed(f"`{' '.join(self.argv[3:])}` exited {self.proc.returncode}: {tail}",
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
    except BaseException as first:
        log("starting the writers again")
        try:
            run_compose(integration, ["start", *services])
        except Exception as restart:  # the backup's failure stays the error; the restart's is added
            also_failed(first, f"starting the writers again ({', '.join(services)})", restart)
        raise
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
    """Dump mongo and tar every data volume but mongod's into `store`; returns the (unverified) manifest."""
    volumes = backed_up_volumes(client, integration, project).archived
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
                            counts=counts, target=store.uri, host_id=store.host_id)
        encryption = getattr(store, "server_side_encryption", None)
        log(f"dumping MongoDB {info.version} into {store.uri}/{backup_id}")
        r = dump_mongo_to_store(container.id, store, f"{backup_id}/{MONGO_OBJECT}", progress)
        manifest.objects.append(BackupObject(r.key, "mongo", "mender-mongo", r.size, r.sha256, "gzip", encryption,
                                             r.version_id))
        for volume in volumes:
            log(f"archiving volume {volume}")
            r = stream_volume_to_store(client, image, volume, store, volume_key(backup_id, volume), progress)
            manifest.objects.append(BackupObject(r.key, VOLUME, volume, r.size, r.sha256, "none", encryption,
                                                 r.version_id))
    store.put_bytes(manifest.key, manifest.to_json(store.signing_key))
    return manifest


def backed_up_volumes(client: docker.DockerClient, integration: Path, project: str = PROJECT) -> InstallationVolumes:
    """The installation's data volumes (what its services mount, and prod.yml's external ones)."""
    declared = external_volumes((integration / "production" / "config" / "prod.yml").read_text())
    return installation_volumes(client, project, mongo_mod.MONGO_SERVICE, declared)


def verify_backup(store: BackupStore, manifest: Manifest, progress: Progress | None = None,
                  only: list[BackupObject] | None = None) -> Manifest:
    """Read every object back (or `only` those, the others verified when they were written),
    recompute SHA-256; mark the manifest verified only if all match."""
    verify_objects(store, manifest.objects if only is None else only, progress)
    manifest.verified_utc = _now()
    store.put_bytes(manifest.key, manifest.to_json(store.signing_key))
    return manifest


def verify_objects(store: BackupStore, objects: list[BackupObject], progress: Progress | None = None) -> None:
    """Read each object back by its version and compare size and SHA-256 with what was written."""
    for obj in objects:
        size, sha = sha256_of_chunks(store.read_chunks(obj.key, obj.version_id), progress)
        if (size, sha) != (obj.size, obj.sha256):
            raise ChecksumMismatch(f"{store.uri}/{obj.key} reads back as {size} bytes sha256 {sha[:12]}…, "
                                   f"written as {obj.size} bytes sha256 {obj.sha256[:12]}…",
                                   "the backup is not usable; check the target's health and run a new backup")


def read_manifest(store: BackupStore, key: str, allow_unsigned: bool = False) -> Manifest:
    """A manifest of `store`, checked (see `Manifest.from_json`)."""
    return Manifest.from_json(store.get_bytes(key), store.signing_key, allow_unsigned, where=f"{store.uri}/{key}")


def list_backups(store: BackupStore, log: Callable[[str], None] | None = None) -> list[Manifest]:
    """Every trusted backup manifest of this host's namespace, oldest first. Untrusted ones
    (unsigned, forged, malformed) are left alone: never chosen, never pruned."""
    manifests = []
    for key in store.list_keys(""):
        if not (key.endswith("/" + MANIFEST) and key.count("/") == 1):
            continue
        try:
            manifests.append(read_manifest(store, key))
        except ManifestUntrusted as exc:
            if log:
                log(f"ignored {store.uri}/{key}: {exc.message}")
    return sorted(manifests, key=lambda m: m.backup_id)


def newest_verified_backup(store: BackupStore) -> Manifest:
    """The newest verified backup in `store`, or an error saying there is none."""
    verified = [m for m in list_backups(store) if m.verified]
    if not verified:
        raise UpgradeError(f"no verified backup in {store.uri}", "run `mender-upgrade backup` first")
    return verified[-1]


def mark_in_use(store: BackupStore, run_id: str, backup_id: str) -> None:
    """Record that run `run_id` may roll back with `backup_id`: pruning keeps it."""
    store.put_bytes(f"{IN_USE}/{run_id}", backup_id.encode())


def in_use(store: BackupStore) -> dict[str, str]:
    """run id -> backup id of every in-use mark of this host."""
    return {key.split("/", 1)[1]: store.get_bytes(key).decode(errors="replace").strip()
            for key in store.list_keys(IN_USE + "/")}


def clear_in_use(store: BackupStore) -> list[str]:
    """Drop the in-use marks of earlier runs; only with the host's upgrade lock held (no other
    run of this host is alive then)."""
    marks = store.list_keys(IN_USE + "/")
    store.delete_keys(marks)
    return marks


def prune_backups(store: BackupStore, keep_last: int) -> list[str]:
    """Delete all but the newest `keep_last` verified backups of this host (and unverified
    ones older than the newest verified); the newest verified backup and every backup a run
    marked in use are never deleted."""
    backups = list_backups(store)
    verified = [m for m in backups if m.verified]
    if not verified:
        return []
    keep = {m.backup_id for m in verified[-max(keep_last, 1):]} | set(in_use(store).values())
    newest = verified[-1].backup_id
    doomed = [m.backup_id for m in backups if m.backup_id not in keep and m.backup_id < newest]
    for backup_id in doomed:
        store.delete_keys(store.list_keys(backup_id + "/"))
    return doomed


def clear_leftovers(client: docker.DockerClient, store: BackupStore, log: Callable[[str], None]) -> None:
    """With the host's upgrade lock held: remove what killed runs left (unfinished uploads,
    helper containers pinning volumes, in-use marks)."""
    for key in store.abort_stale_uploads():
        log(f"removed an unfinished upload of {key} (left by a run that was killed)")
    for name in remove_stale_helpers(client):
        log(f"removed the volume helper container {name} (left by a run that was killed)")
    clear_in_use(store)


def ensure_verified_backup(client: docker.DockerClient, integration: Path, store: BackupStore, *,
                           run_id: str | None = None, mode: str = "quiesce", keep_last: int = 5,
                           writers: list[str] | None = None, project: str = PROJECT, holds_lock: bool = False,
                           log: Callable[[str], None] = print, progress: Progress | None = None) -> Manifest:
    """Give me a verified backup or raise: probe, back up, verify, then prune old ones.

    Only this host's namespace of the target is touched. With `holds_lock` (the host's upgrade
    lock: no other run of this host is alive) the leftovers of killed runs are cleared first and
    the new backup is marked in use by `run_id`, so no later prune removes it while it may be needed."""
    store.probe()  # fails before anything is stopped when the target is unreachable or denies us
    if holds_lock:
        clear_leftovers(client, store, log)
    run_id = run_id or uuid.uuid4().hex
    manifest = create_backup(client, integration, store, run_id, mode=mode,
                             writers=writers, project=project, log=log, progress=progress)
    manifest = verify_backup(store, manifest, progress)
    log(f"backup {manifest.backup_id} verified ({len(manifest.objects)} objects)")
    if holds_lock:
        mark_in_use(store, run_id, manifest.backup_id)
    for pruned in prune_backups(store, keep_last):
        log(f"pruned old backup {pruned}")
    return manifest
