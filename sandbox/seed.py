"""Seed data for the sandbox, written through the real wire protocol and the Docker API.

Deterministic (fixed random seed), small enough for the mongo stand-in's insert speed, and
shaped like Mender's own collections: deviceauth with valid devices and decommissioning
leftovers in the era's layout, inventory with client versions, deployments metadata, and
artifact files in the `mender-artifacts` volume (with a top-level `.minio.sys` dot entry).
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pymongo import ASCENDING, MongoClient

TENANTS = ["5f1a2b3c4d5e6f7a8b9c0d1e", "5f1a2b3c4d5e6f7a8b9c0d2f"]
OLD_CLIENT_VERSIONS = ["1.6.1", "1.7.0"]
CLIENT_VERSIONS = ["1.6.1", "1.7.0", "1.7.1", "2.6.0", "3.4.0"]
BIG_ARTIFACT_BYTES = 6 * 1024 * 1024
EPOCH = datetime(2023, 4, 1, tzinfo=timezone.utc)
# Far future: the tokens collection has a TTL index, and a real server (and the stand-in)
# deletes expired documents.
TOKEN_EXPIRY = datetime(2099, 1, 1, tzinfo=timezone.utc)


@dataclass
class TenantSeed:
    """What one tenant's deviceauth data holds, so tests can assert exact outcomes."""

    database: str
    tenant_id: str
    valid_devices: list[str] = field(default_factory=list)
    valid_auth_sets: list[str] = field(default_factory=list)
    decommissioning_devices: list[str] = field(default_factory=list)
    leftover_auth_sets: list[str] = field(default_factory=list)  # dangling or decommissioning
    leftover_tokens: list[str] = field(default_factory=list)
    valid_tokens: list[str] = field(default_factory=list)


@dataclass
class SeedSummary:
    per_tenant_databases: bool
    tenants: list[TenantSeed]
    inventory_old_clients: int
    artifacts: dict[str, str]  # path under /export -> sha256


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _device(rng: random.Random, status: str, tenant: str | None, decommissioning: bool = False) -> dict:
    mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
    id_data = f'{{"mac":"{mac}"}}'
    doc = {"_id": _uuid(rng), "id_data": id_data, "id_data_struct": {"mac": mac},
           "id_data_sha256": hashlib.sha256(id_data.encode()).digest(), "status": status,
           "decommissioning": decommissioning, "revision": rng.randint(1, 4),
           "created_ts": EPOCH + timedelta(minutes=rng.randrange(100000)),
           "updated_ts": EPOCH + timedelta(minutes=rng.randrange(100000, 200000))}
    if tenant is not None:
        doc["tenant_id"] = tenant
    return doc


def _auth_set(rng: random.Random, device: dict, status: str, tenant: str | None) -> dict:
    doc = {"_id": _uuid(rng), "device_id": device["_id"], "id_data": device["id_data"],
           "id_data_sha256": device["id_data_sha256"],
           "pubkey": f"-----BEGIN PUBLIC KEY-----\n{rng.getrandbits(256):064x}\n-----END PUBLIC KEY-----\n",
           "status": status, "ts": device["created_ts"]}
    if tenant is not None:
        doc["tenant_id"] = tenant
    return doc


def _token(auth_set: dict, tenant: str | None) -> dict:
    doc = {"_id": auth_set["_id"], "sub": auth_set["device_id"], "exp": {"time": TOKEN_EXPIRY},
           "iss": "Mender", "scp": "mender.*"}
    if tenant is not None:
        doc["tenant_id"] = tenant
    return doc


def _insert(collection, docs: list[dict]) -> None:
    """insert_many in batches of 500 (the stand-in's per-insert cost grows with the collection)."""
    for i in range(0, len(docs), 500):
        collection.insert_many(docs[i:i + 500])


def _seed_deviceauth(db, rng: random.Random, tenant_field: str | None, seed: TenantSeed, fleet: int = 1) -> None:
    devices, auth_sets, tokens = [], [], []
    for status, n in [("accepted", 12 * fleet), ("pending", 4 * fleet), ("rejected", 3 * fleet)]:
        for _ in range(n):
            dev = _device(rng, status, tenant_field)
            aset = _auth_set(rng, dev, status, tenant_field)
            devices.append(dev)
            auth_sets.append(aset)
            seed.valid_devices.append(dev["_id"])
            seed.valid_auth_sets.append(aset["_id"])
            if status == "accepted":
                tokens.append(_token(aset, tenant_field))
                seed.valid_tokens.append(aset["_id"])
    for _ in range(3):  # failed decommissioning: flag set, auth sets and tokens still there
        dev = _device(rng, "accepted", tenant_field, decommissioning=True)
        devices.append(dev)
        seed.decommissioning_devices.append(dev["_id"])
        for _ in range(2):
            aset = _auth_set(rng, dev, "accepted", tenant_field)
            auth_sets.append(aset)
            tokens.append(_token(aset, tenant_field))
            seed.leftover_auth_sets.append(aset["_id"])
            seed.leftover_tokens.append(aset["_id"])
    for _ in range(2):  # device document already gone, auth set left behind
        ghost = _device(rng, "accepted", tenant_field)
        aset = _auth_set(rng, ghost, "accepted", tenant_field)
        auth_sets.append(aset)
        tokens.append(_token(aset, tenant_field))
        seed.leftover_auth_sets.append(aset["_id"])
        seed.leftover_tokens.append(aset["_id"])
    _insert(db.devices, devices)
    _insert(db.auth_sets, auth_sets)
    _insert(db.tokens, tokens)


def _deviceauth_indexes(db, tenant_scoped: bool) -> None:
    prefix = [("tenant_id", ASCENDING)] if tenant_scoped else []
    db.devices.create_index([*prefix, ("id_data_sha256", ASCENDING)], unique=True, name="id_data_sha256")
    db.devices.create_index([("status", ASCENDING)], name="status")
    db.auth_sets.create_index([*prefix, ("id_data_sha256", ASCENDING), ("pubkey", ASCENDING)],
                              unique=True, name="id_data_sha256_1_pubkey_1")
    db.auth_sets.create_index([("device_id", ASCENDING)], name="device_id")
    db.tokens.create_index([("exp.time", ASCENDING)], expireAfterSeconds=0, name="TokenExpiration")


MAX_FLEET = 15  # 3 tenants x 22 x 15 = 990 documents in the largest collection: under the
# mongo stand-in's insert cliff (~1 000 documents per collection through the wire)


def seed_mongo(client: MongoClient, *, per_tenant_databases: bool, seed: int = 2604, fleet: int = 1) -> SeedSummary:
    """Write Mender-shaped data; `per_tenant_databases` selects the <= 3.5 deviceauth layout;
    `fleet` multiplies the devices of every tenant (1: 19 valid devices per tenant)."""
    if not 1 <= fleet <= MAX_FLEET:
        raise ValueError(f"fleet {fleet} is out of range; give 1 to {MAX_FLEET}")
    rng = random.Random(seed)
    tenants: list[TenantSeed] = []
    if per_tenant_databases:
        for tenant in ["", *TENANTS]:
            name = f"deviceauth-{tenant}" if tenant else "deviceauth"
            ts = TenantSeed(database=name, tenant_id=tenant)
            _seed_deviceauth(client[name], rng, None, ts, fleet)
            _deviceauth_indexes(client[name], tenant_scoped=False)
            tenants.append(ts)
    else:
        db = client["deviceauth"]
        for tenant in ["", *TENANTS]:
            ts = TenantSeed(database="deviceauth", tenant_id=tenant)
            _seed_deviceauth(db, rng, tenant, ts, fleet)
            tenants.append(ts)
        _deviceauth_indexes(db, tenant_scoped=True)

    inventory, old = [], 0
    for ts in tenants:
        for dev_id in ts.valid_devices:
            version = rng.choice(CLIENT_VERSIONS)
            old += version in OLD_CLIENT_VERSIONS
            doc = {"_id": dev_id, "attributes": {
                "inventory-mender_client_version": {"name": "mender_client_version", "scope": "inventory", "value": version},
                "inventory-device_type": {"name": "device_type", "scope": "inventory", "value": "raspberrypi4"},
                "identity-mac": {"name": "mac", "scope": "identity", "value": "00:11:22:33:44:55"}},
                "updated_ts": EPOCH}
            if not per_tenant_databases:
                doc["tenant_id"] = ts.tenant_id
            inventory.append(doc)
    _insert(client.inventory.devices, inventory)
    client.inventory.devices.create_index([("attributes.inventory-device_type.value", ASCENDING)], name="device_type")

    images = [{"_id": _uuid(rng), "meta_artifact": {"name": f"release-{i}", "device_types_compatible": ["raspberrypi4"]},
               "size": 1024 * (i + 1), "modified": EPOCH + timedelta(days=i)} for i in range(3)]
    client.deployment_service.images.insert_many(images)
    client.deployment_service.images.create_index([("meta_artifact.name", ASCENDING)], unique=True, name="artifact_name")
    client.deployment_service.deployments.insert_one(
        {"_id": _uuid(rng), "name": "release-2 rollout", "artifact_name": "release-2", "created": EPOCH,
         "stats": {"success": 10, "failure": 1}})
    client.useradm.users.insert_one({"_id": _uuid(rng), "email": "admin@example.com",
                                     "password": "$2a$10$standinstandinstandinstandinstandinstandinstandinsta",
                                     "created_ts": EPOCH})
    return SeedSummary(per_tenant_databases, tenants, old, {})


def artifact_files(seed: int = 2604) -> dict[str, tuple[bytes, int, int]]:
    """path under /export -> (content, mode, uid): a big incompressible one, small ones, a dot entry."""
    rng = random.Random(seed)
    return {
        ".minio.sys/format.json": (b'{"version":"1","format":"fs","fs":{"version":"2"}}', 0o600, 0),
        "mender-artifact-storage/release-0.mender": (rng.randbytes(BIG_ARTIFACT_BYTES), 0o644, 1000),
        "mender-artifact-storage/release-1.mender": (rng.randbytes(70_000), 0o640, 1000),
        "mender-artifact-storage/release-2.mender": (b"", 0o644, 0),
    }


BULK_DIR = "mender-artifact-storage/bulk"
BULK_FILE_MIB = 256  # a large rootfs artifact


def seed_bulk_artifacts(container, gib: float) -> dict[str, str]:
    """`gib` GiB of incompressible artifact files written inside the storage container (urandom,
    never through this process's memory), as real servers hold: path -> sha256."""
    total_mib = int(gib * 1024)
    sizes = [BULK_FILE_MIB] * (total_mib // BULK_FILE_MIB) + ([total_mib % BULK_FILE_MIB] if total_mib % BULK_FILE_MIB else [])
    script = [f"set -e; mkdir -p /export/{BULK_DIR}"]
    script += [f"dd if=/dev/urandom of=/export/{BULK_DIR}/rootfs-{i}.mender bs=1M count={mib} 2>/dev/null"
               for i, mib in enumerate(sizes)]
    script.append(f"cd /export && sha256sum {BULK_DIR}/*")
    code, out = container.exec_run(["sh", "-c", "; ".join(script)])
    if code != 0:
        raise RuntimeError(f"writing {gib} GiB of artifacts failed (exit {code}): {out.decode(errors='replace')[-500:]}")
    return {path: sha for sha, path in (line.split(None, 1) for line in out.decode().splitlines() if line.strip())}


def seed_artifacts(container, seed: int = 2604) -> dict[str, str]:
    """Write the artifact files into the volume mounted at /export of `container`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in [".minio.sys", "mender-artifact-storage"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, (content, mode, uid) in artifact_files(seed).items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid = len(content), mode, uid, uid
            tar.addfile(info, io.BytesIO(content))
    container.put_archive("/export", buf.getvalue())
    return {path: hashlib.sha256(content).hexdigest() for path, (content, _, _) in artifact_files(seed).items()}
