"""Backup targets: S3 (boto3) and a local folder, behind one small interface.

Objects are written from streams of unknown length with bounded memory: the S3 store reads
fixed-size parts, hashes them in order (SHA-256 of the whole object) and uploads a few parts
concurrently; any failure aborts the multipart upload so no orphaned parts remain. SDK errors
are translated here, once, into the tool's typed errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Protocol
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from tasks.errors import TransientError, UpgradeError

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


class BackupStore(Protocol):
    uri: str

    def upload_stream(self, key: str, stream: BinaryIO, progress: Progress | None = None) -> ObjectReceipt: ...
    def read_chunks(self, key: str) -> Iterator[bytes]: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_keys(self, keys: list[str]) -> None: ...
    def probe(self) -> None: ...
    def abort_stale_uploads(self) -> list[str]: ...


def read_full(stream: BinaryIO, size: int) -> bytes:
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
    client: object
    endpoint: str
    server_side_encryption: str | None = None
    object_lock_days: int | None = None
    part_size: int = 8 * 1024 * 1024
    max_parts_in_flight: int = 3
    immutable: bool = False  # refuse a bucket where backups could be deleted or overwritten early

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
            from datetime import datetime, timedelta, timezone
            extra |= {"ObjectLockMode": "GOVERNANCE",
                      "ObjectLockRetainUntilDate": datetime.now(timezone.utc) + timedelta(days=self.object_lock_days)}
        return extra

    def upload_stream(self, key: str, stream: BinaryIO, progress: Progress | None = None) -> ObjectReceipt:
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
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException as exc:
            self._abort(full, upload_id)
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise self._translate(exc, f"upload {full}") from exc
            raise
        return ObjectReceipt(key=key, size=size, sha256=digest.hexdigest())

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

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            yield from body.iter_chunks(READ_CHUNK)
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"read {self._key(key)}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   ChecksumAlgorithm="SHA256", **self._extra())
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, f"write {self._key(key)}") from exc

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
        """Keys of multipart uploads started and neither completed nor aborted."""
        out = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key(""))
        return [u["Key"] for u in out.get("Uploads", [])]

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

    def probe(self) -> None:
        """Write, read back and delete a small object: proves reachability and permissions."""
        if self.immutable:
            self.require_immutable()
        self.put_bytes(".probe", b"mender-upgrade probe")
        if self.get_bytes(".probe") != b"mender-upgrade probe":
            raise ChecksumMismatch(f"S3 at {self.endpoint} returned different bytes than written", "check the server")
        self.delete_keys([".probe"])


@dataclass
class LocalStore:
    root: Path

    @property
    def uri(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UpgradeError(f"backup key {key!r} escapes the target folder", "this is a bug; report it")
        return path

    def abort_stale_uploads(self) -> list[str]:
        """Remove `.partial` files a killed run left behind."""
        stale = sorted(self.root.rglob("*.partial")) if self.root.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return [str(path.relative_to(self.root)) for path in stale]

    def upload_stream(self, key: str, stream: BinaryIO, progress: Progress | None = None) -> ObjectReceipt:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        digest, size = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as out:
                while chunk := stream.read(READ_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            partial.rename(path)  # only a complete object ever carries the final name
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise StoreFull(f"the backup folder {self.root} is full (wrote {size} bytes of {key})",
                                "free space there or choose another target; the partial file was removed") from exc
            raise
        return ObjectReceipt(key=key, size=size, sha256=digest.hexdigest())

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    def put_bytes(self, key: str, data: bytes) -> None:
        import io
        self.upload_stream(key, io.BytesIO(data))

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def list_keys(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file() and not p.name.endswith(".partial")
                      and p.relative_to(self.root).as_posix().startswith(prefix))

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def probe(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
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
    """`s3://bucket/prefix` or `file:///dir` -> (scheme, bucket-or-dir, prefix); errors name the value."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3" and parsed.netloc:
        return "s3", parsed.netloc, parsed.path.strip("/")
    if parsed.scheme == "file" and parsed.path.startswith("/"):
        return "file", parsed.path, ""
    raise UpgradeError(f"backup target {uri!r} is not understood",
                       "use s3://bucket/prefix or file:///absolute/folder")
