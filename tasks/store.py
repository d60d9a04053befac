"""Backup targets: S3 (boto3) and a local folder, behind one small interface.

Objects are written from streams of unknown length with bounded memory: the S3 store reads
fixed-size parts, hashes them in order (SHA-256 of the whole object) and uploads a few parts
concurrently; any failure aborts the multipart upload so no orphaned parts remain. SDK errors
are translated here, once, into the tool's typed errors.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, ContextManager, Iterator, Protocol
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from mender_upgrade.tasks.errors import TransientError, UpgradeError

# Called with each chunk's byte count, always in the thread that called the store (callers
# report to Prefect from it, which needs the run's context).
Progress = Callable[[int], None]
READ_CHUNK = 1024 * 1024


class StoreUnreachable(TransientError):
    """The backup target does not answer (network, server down)."""


class StoreAccessDenied(UpgradeError):
    """The backup target refused our credentials or the bucket is missing."""


class StoreFull(UpgradeError):
    """The local backup target ran out of space."""


class ChecksumMismatch(UpgradeError):
    """An object read back does not have the SHA-256 recorded when it was written."""


@dataclass(frozen=True)
class ObjectReceipt:
    key: str
    size: int
    sha256: str
    version_id: str | None = None  # the S3 version written (versioned buckets): what restores read


class TargetRefused(UpgradeError):
    """The backup target is not acceptable (no prefix, a symlink, unsafe permissions)."""


# A readable byte stream: a file, a pipe, or a volumes.IterStream over chunks.
ByteStream = IO[bytes] | io.RawIOBase


class BackupStore(Protocol):
    @property
    def uri(self) -> str: ...

    host_id: str          # the namespace `<target>/<host_id>/` this store reads and writes ("" = the target root)
    signing_key: bytes    # HMAC key of manifests; kept outside the backups

    def upload_stream(self, key: str, stream: ByteStream, progress: Progress | None = None) -> ObjectReceipt: ...
    def read_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]: ...
    def pinned(self, key: str, version_id: str | None) -> "ContextManager[Callable[[], Iterator[bytes]]]": ...
    def put_bytes(self, key: str, data: bytes) -> str | None: ...  # the version id where the bucket keeps versions
    def get_bytes(self, key: str) -> bytes: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_keys(self, keys: list[str]) -> None: ...
    def probe(self) -> None: ...
    def abort_stale_uploads(self) -> list[str]: ...


def read_full(stream: ByteStream, size: int) -> bytes:
    """Read up to `size` bytes, looping over short reads of pipes and sockets."""
    parts, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def sha256_of_chunks(chunks: Iterator[bytes], progress: Progress | None = None) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
        if progress:
            progress(len(chunk))
    return size, h.hexdigest()


class BucketNotImmutable(UpgradeError):
    """backup.immutable is set but the bucket has no versioning or no Object Lock."""


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any  # a boto3 S3 client (untyped)
    endpoint: str
    server_side_encryption: str | None = None
    object_lock_days: int | None = None
    object_lock_mode: str = "GOVERNANCE"  # or COMPLIANCE: not even the root account can shorten it
    part_size: int = 8 * 1024 * 1024
    max_parts_in_flight: int = 3
    immutable: bool = False  # refuse a bucket where backups could be deleted or overwritten early
    host_id: str = ""
    signing_key: bytes = b""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def _translate(self, exc: Exception, action: str) -> UpgradeError:
        where = f"{self.endpoint} bucket {self.bucket!r}"
        if isinstance(exc, (EndpointConnectionError, ConnectionError)) or (
                isinstance(exc, BotoCoreError) and not isinstance(exc, ClientError)):
            return StoreUnreachable(f"S3 at {where} is unreachable while trying to {action}",
                                    "check the endpoint URL and that the server is up; retrying")
        code = exc.response.get("Error", {}).get("Code", "?") if isinstance(exc, ClientError) else "?"
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "NoSuchBucket", "403"):
            return StoreAccessDenied(f"S3 at {where} refused to {action}: {code}",
                                     "check the access key, secret and bucket name (the secret is not shown)")
        if code in ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "500", "503"):
            return StoreUnreachable(f"S3 at {where} failed to {action}: {code}", "retrying with backoff")
        return UpgradeError(f"S3 at {where} failed to {action}: {code}", "see the S3 server's log")

    def _extra(self) -> dict:
        extra: dict = {"ServerSideEncryption": self.server_side_encryption} if self.server_side_encryption else {}
        if self.object_lock_days:
            extra |= {"ObjectLockMode": self.object_lock_mode,
                      "ObjectLockRetainUntilDate": datetime.now(timezone.utc) + timedelta(days=self.object_lock_days)}
        return extra

    def upload_stream(self, key: str, stream: ByteStream, progress: Progress | None = None) -> ObjectReceipt:
        full = self._key(key)
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._extra())["UploadId"]
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"start an upload of {full}") from exc
        digest, size, number = hashlib.sha256(), 0, 0
        pending: dict[Future, int] = {}  # part upload -> its size
        parts: list[dict] = []

        def send(n: int, body: bytes) -> dict:
            part = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                           PartNumber=n, Body=body)
            return {"PartNumber": n, "ETag": part["ETag"]}

        def settle(return_when: str) -> None:
            """Collect finished parts in this (the caller's) thread: `progress` runs here, never
            in a pool thread, where the caller's context (a Prefect run's settings and client)
            does not exist. Re-raises the first failed part."""
            done, _ = wait(pending, return_when=return_when)
            for future in done:
                parts.append(future.result())
                sent = pending.pop(future)
                if progress:
                    progress(sent)

        try:
            with ThreadPoolExecutor(self.max_parts_in_flight) as pool:
                try:
                    while True:
                        body = read_full(stream, self.part_size)
                        if not body and number > 0:
                            break
                        digest.update(body)
                        size += len(body)
                        number += 1
                        if len(pending) >= self.max_parts_in_flight:  # bounds memory: at most N parts in flight
                            settle(FIRST_COMPLETED)
                        pending[pool.submit(send, number, body)] = len(body)
                        if len(body) < self.part_size:
                            break
                    while pending:
                        settle(FIRST_COMPLETED)
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
            parts.sort(key=lambda part: part["PartNumber"])
            done = self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})
        except BaseException as exc:
            self._abort(full, upload_id)
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise self._translate(exc, f"upload {full}") from exc
            raise
        return ObjectReceipt(key=key, size=size, sha256=digest.hexdigest(), version_id=_version(done))

    def _abort(self, full: str, upload_id: str, delays: tuple[float, ...] = (0, 1, 2, 4, 8)) -> bool:
        """Abort a failed multipart upload, waiting out a short outage so no parts are orphaned."""
        for delay in delays:
            time.sleep(delay)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return True
            except BotoCoreError:
                continue
        return False  # still unreachable: a lifecycle rule on the bucket must expire the parts

    def read_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        try:
            version = {"VersionId": version_id} if version_id else {}
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **version)["Body"]
            yield from body.iter_chunks(READ_CHUNK)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"read {self._key(key)}") from exc

    @contextmanager
    def pinned(self, key: str, version_id: str | None):
        """Chunks of one fixed version of `key`, readable as often as needed: the S3 version
        when the bucket keeps versions, else a private local copy (a later upload to the same
        key cannot change what was checked and is then applied)."""
        if version_id:
            yield lambda: self.read_chunks(key, version_id)
            return
        with tempfile.TemporaryFile(prefix="mender-upgrade-") as copy:  # 0600, unlinked at once
            for chunk in self.read_chunks(key):
                copy.write(chunk)
            copy.flush()
            yield lambda: _file_chunks(copy.fileno())

    def put_bytes(self, key: str, data: bytes) -> str | None:
        try:
            out = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                         ChecksumAlgorithm="SHA256", **self._extra())
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"write {self._key(key)}") from exc
        return _version(out)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read_chunks(key))

    def list_keys(self, prefix: str) -> list[str]:
        keys, base = [], self._key("")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys += [o["Key"][len(base):] for o in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, "list backups") from exc
        return sorted(keys)

    def delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
            except (BotoCoreError, ClientError) as exc:
                raise self._translate(exc, "delete old backups") from exc

    def pending_uploads(self) -> list[str]:
        """Keys (under this store's prefix) of multipart uploads neither completed nor aborted."""
        base = self._key("")
        out = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=base)
        return [u["Key"][len(base):] for u in out.get("Uploads", [])]

    def abort_stale_uploads(self) -> list[str]:
        """Abort multipart uploads a killed run left under this prefix (their parts cost storage
        and no manifest names them). Called with the host's lock held, so none is live."""
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key("")).get("Uploads", [])
            for upload in uploads:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, "abort unfinished uploads") from exc
        return [u["Key"] for u in uploads]

    def require_immutable(self) -> None:
        """Versioning and Object Lock must be on: nobody (nor a leaked key) can destroy a backup."""
        try:
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status", "never enabled")
            try:
                lock = self.client.get_object_lock_configuration(Bucket=self.bucket)[
                    "ObjectLockConfiguration"].get("ObjectLockEnabled", "not enabled")
            except ClientError as exc:
                if "ObjectLockConfigurationNotFound" not in exc.response.get("Error", {}).get("Code", ""):
                    raise
                lock = "not enabled"
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, "read the bucket's versioning and Object Lock settings") from exc
        if versioning != "Enabled" or lock != "Enabled":
            raise BucketNotImmutable(
                f"bucket {self.bucket!r} at {self.endpoint} is not immutable (versioning: {versioning}, "
                f"Object Lock: {lock}) and backup.immutable is set",
                "use a bucket created with Object Lock (it turns versioning on), or set backup.immutable "
                "to false; nothing was changed")
        if not self.object_lock_days and not self._default_retention():
            raise BucketNotImmutable(
                f"bucket {self.bucket!r} at {self.endpoint} has Object Lock but no default retention, and "
                "backup.object_lock_days is not set: backups could still be deleted at once",
                "set backup.object_lock_days (e.g. 30) or a default retention on the bucket; nothing was changed")

    def _default_retention(self) -> dict | None:
        try:
            config = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, "read the bucket's Object Lock settings") from exc
        return config.get("Rule", {}).get("DefaultRetention")

    def probe(self) -> None:
        """Write, read back and delete a small object: proves reachability and permissions."""
        if self.immutable:
            self.require_immutable()
        self.put_bytes(".probe", b"mender-upgrade probe")
        if self.get_bytes(".probe") != b"mender-upgrade probe":
            raise ChecksumMismatch(f"S3 at {self.endpoint} returned different bytes than written", "check the server")
        self.delete_keys([".probe"])


def _version(response: dict) -> str | None:
    """The VersionId S3 gave a written object; None (or "null") when the bucket keeps no versions."""
    version = response.get("VersionId")
    return version if version and version != "null" else None


def _file_chunks(fd: int) -> Iterator[bytes]:
    """Chunks of an open file from its start (positional reads: several readers may share `fd`)."""
    offset = 0
    while chunk := os.pread(fd, READ_CHUNK, offset):
        offset += len(chunk)
        yield chunk


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@dataclass
class LocalStore:
    """A folder only root can read (folders 0700, files 0600: backups hold every device's auth
    data); symlinks are never followed, so nobody can point a write or a delete elsewhere."""

    root: Path
    host_id: str = ""
    signing_key: bytes = b""

    @property
    def uri(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts):
            raise UpgradeError(f"backup key {key!r} escapes the target folder", "this is a bug; report it")
        return self.root.joinpath(*parts)

    def _make_dirs(self, folder: Path) -> None:
        """Create `folder` (the root or below it) 0700, tightening existing ones; a symlink or a
        file on the way is refused, never followed."""
        os.makedirs(self.root.parent, mode=PRIVATE_DIR, exist_ok=True)
        path = self.root
        for part in ("", *folder.relative_to(self.root).parts):
            path = path / part if part else path
            try:
                os.mkdir(path, PRIVATE_DIR)
            except FileExistsError:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    raise TargetRefused(f"{path} in the backup target is a symlink",
                                        "the target must hold plain folders and files only; nothing was written") from None
                if not stat.S_ISDIR(mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path)) from None
            if stat.S_IMODE(os.lstat(path).st_mode) != PRIVATE_DIR:
                os.chmod(path, PRIVATE_DIR)  # mkdir's mode is reduced by the umask; old folders were 0755

    def abort_stale_uploads(self) -> list[str]:
        """Remove `.partial` files a killed run left behind (in this host's folder only)."""
        stale = [p for p in self._walk() if p.name.endswith(".partial")]
        for path in stale:
            path.unlink(missing_ok=True)
        return [path.relative_to(self.root).as_posix() for path in stale]

    def _walk(self) -> list[Path]:
        """Regular files under the root; symlinks (to files or folders) are neither listed nor followed."""
        if not os.path.isdir(self.root) or os.path.islink(self.root):
            return []
        out = []
        for folder, _, files in os.walk(self.root, followlinks=False):
            for name in files:
                path = Path(folder) / name
                if stat.S_ISREG(os.lstat(path).st_mode):
                    out.append(path)
        return out

    def upload_stream(self, key: str, stream: ByteStream, progress: Progress | None = None) -> ObjectReceipt:
        path = self._path(key)
        self._make_dirs(path.parent)
        partial = path.with_name(path.name + ".partial")
        digest, size = hashlib.sha256(), 0
        try:
            # O_EXCL|O_NOFOLLOW: never write through a planted symlink or into a file someone else opened.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
        except FileExistsError:
            raise TargetRefused(f"{self.root}/{key}.partial already exists (another writer, or a planted file)",
                                "remove it after checking no other run writes there; nothing was written") from None
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(READ_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if os.path.islink(path):
                raise TargetRefused(f"{path} is a symlink", "remove it; the backup target must hold plain files")
            os.rename(partial, path)  # only a complete object ever carries the final name
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise StoreFull(f"the backup folder {self.root} is full (wrote {size} bytes of {key})",
                                "free space there or choose another target; the partial file was removed") from exc
            raise
        return ObjectReceipt(key=key, size=size, sha256=digest.hexdigest())

    def _open(self, key: str) -> int:
        try:
            return os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise TargetRefused(f"{self.root}/{key} is a symlink", "the backup target must hold plain files") from None
            raise

    def read_chunks(self, key: str, version_id: str | None = None) -> Iterator[bytes]:
        fd = self._open(key)
        try:
            yield from _file_chunks(fd)
        finally:
            os.close(fd)

    @contextmanager
    def pinned(self, key: str, version_id: str | None):
        """Chunks of the file as opened now: replacing it (a rename) later changes nothing read."""
        fd = self._open(key)
        try:
            yield lambda: _file_chunks(fd)
        finally:
            os.close(fd)

    def put_bytes(self, key: str, data: bytes) -> None:
        import io
        self.upload_stream(key, io.BytesIO(data))

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read_chunks(key))

    def list_keys(self, prefix: str) -> list[str]:
        keys = (p.relative_to(self.root).as_posix() for p in self._walk() if not p.name.endswith(".partial"))
        return sorted(k for k in keys if k.startswith(prefix))

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def probe(self) -> None:
        self._make_dirs(self.root)
        self.put_bytes(".probe", b"mender-upgrade probe")
        self.delete_keys([".probe"])


def s3_client(endpoint_url: str | None, region: str, access_key: str | None, secret_key: str | None,
              path_style: bool = True, profile: str | None = None):
    session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path" if path_style else "auto"},
                      retries={"max_attempts": 3, "mode": "standard"},
                      connect_timeout=3, read_timeout=60, max_pool_connections=8))


def parse_target(uri: str) -> tuple[str, str, str]:
    """`s3://bucket/prefix` or `file:///dir` -> (scheme, bucket-or-dir, prefix); errors name the value.

    A prefix (a folder) is required: the tool aborts unfinished uploads and removes partial
    files under its target, which must never be a whole bucket or the whole filesystem."""
    parsed = urlparse(uri)
    parts = [p for p in parsed.path.split("/") if p]
    if ".." in parts or "." in parts:
        raise UpgradeError(f"backup target {uri!r} contains '.' or '..'", "write the folder without them")
    if parsed.scheme == "s3" and parsed.netloc:
        if not parts:
            raise UpgradeError(f"backup target {uri!r} names a whole bucket",
                               "add a prefix of the tool's own: s3://bucket/mender-backups")
        return "s3", parsed.netloc, "/".join(parts)
    if parsed.scheme == "file" and parsed.path.startswith("/") and not parsed.netloc:
        if not parts:
            raise UpgradeError(f"backup target {uri!r} is the root folder",
                               "use a folder of the tool's own, e.g. file:///var/backups/mender-upgrade")
        return "file", "/" + "/".join(parts), ""
    raise UpgradeError(f"backup target {uri!r} is not understood",
                       "use s3://bucket/prefix or file:///absolute/folder")
