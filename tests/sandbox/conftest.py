"""Fixtures for tests against the running sandbox."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from bson.raw_bson import RawBSONDocument

from mender_upgrade.tasks.settings import BackupSettings
from mender_upgrade.tasks.containers import project_states


@pytest.fixture
def s3_settings(sandbox) -> BackupSettings:
    """A fresh prefix in the sandbox's S3 bucket, with the sandbox's real credentials."""
    return BackupSettings(target=f"s3://{sandbox.s3.bucket}/t-{uuid.uuid4().hex[:8]}",
                          endpoint_url=sandbox.s3.url, access_key_id=sandbox.s3.access_key,
                          secret_access_key=sandbox.s3.secret_key)


def mongo_snapshot(client) -> dict:
    """Raw document bytes and index definitions of every non-system collection."""
    out = {}
    for db_name in client.list_database_names():
        if db_name in ("admin", "local", "config"):
            continue
        db = client.get_database(db_name)
        for coll in db.list_collection_names():
            raw = db.get_collection(coll).with_options(
                codec_options=db.codec_options.with_options(document_class=RawBSONDocument))
            docs = sorted(bytes(d.raw) for d in raw.find())
            idx = sorted((i["name"], tuple(i["key"].items()), i.get("unique", False),
                          i.get("expireAfterSeconds")) for i in db.get_collection(coll).list_indexes())
            out[f"{db_name}.{coll}"] = (docs, idx)
    return out


def artifact_snapshot(sandbox) -> dict[str, str]:
    """path -> 'sha256 mode uid' of every file in the artifact volume, through the minio container."""
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    out = minio.exec_run(["sh", "-c", "cd /export && find . -type f -exec sha256sum {} + && "
                          "find . -exec stat -c '%n %a %u' {} +"]).output.decode()
    return {line: "" for line in sorted(out.splitlines())}


def started_at(sandbox) -> dict[str, str]:
    return {s: sandbox.client.containers.get(st.container_id).attrs["State"]["StartedAt"]
            for s, st in project_states(sandbox.client).items()}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def anonymous_dangling_volumes(client) -> set[str]:
    """Volumes no container uses whose name Docker made up (64 hex digits): what a helper
    container removed without `v` leaves of its image's VOLUMEs."""
    return {v.name for v in client.volumes.list(filters={"dangling": True})
            if len(v.name) == 64 and all(ch in "0123456789abcdef" for ch in v.name)}
