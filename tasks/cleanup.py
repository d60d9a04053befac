"""deviceauth decommissioning cleanup, done with pymongo and proven.

Leftovers of a failed device decommissioning (Mender's definition, `deviceauth maintenance
--decommissioning-cleanup`): devices flagged `decommissioning: true`; auth sets whose
`device_id` is missing from `devices` or points at a flagged device; tokens whose `_id` is
such an auth set's `_id`. The upstream command swallows its errors (exit code always 0) and
likely never deletes the flagged devices, so we find, save, delete and verify ourselves.

Two data layouts, detected from the data: Mender <= 3.5 keeps one database per tenant
(`deviceauth` for the default tenant, `deviceauth-<tenant>` for the others); Mender >= 3.6
keeps every tenant in `deviceauth`, each document carrying `tenant_id`.

`--apply` order: save the exact documents (raw BSON, SHA-256 read back) -> delete by `_id`
in batches -> re-run the same queries (zero leftovers, non-leftover counts unchanged). Every
step can be re-run: an interrupted apply is finished by running it again.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Iterable, Iterator

import bson
from bson import json_util
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import InsertOne, MongoClient
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.mongo import MongoUnreachable, connect
from mender_upgrade.tasks.store import BackupStore, ChecksumMismatch, sha256_of_chunks
from mender_upgrade.tasks.volumes import IterStream

DEVICEAUTH = "deviceauth"
COLLECTIONS = ("devices", "auth_sets", "tokens")
# Tokens, then auth sets, then devices: an apply cut short half-way still leaves something the
# next run detects (a token is found only through its auth set, an auth set through its device).
DELETE_ORDER = ("tokens", "auth_sets", "devices")
RESTORE_ORDER = ("devices", "auth_sets", "tokens")
BATCH = 500
CONNECT_TIMEOUT_MS = 5000
RAW = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
OLD_CLIENT_BELOW = "1.7.1"
LEFTOVERS_OBJECT = "leftovers.bson"
MANIFEST_OBJECT = "manifest.json"


class Layout(str, Enum):
    PER_TENANT_DATABASES = "per-tenant-databases"  # Mender <= 3.5 (deviceauth <= 3.4)
    TENANT_FIELD = "tenant-field"                  # Mender >= 3.6 (deviceauth >= 3.5)


class NoDeviceauthDatabase(UpgradeError):
    """MongoDB holds no deviceauth database at all."""


class CleanupScopeNotFound(UpgradeError):
    """A database or tenant named on the command line does not exist."""


class LeftoversChanged(UpgradeError):
    """The leftovers changed between finding and saving them."""


class CleanupNotVerified(UpgradeError):
    """After deleting, leftovers remain or documents that were not leftovers changed."""


class RestoreConflict(UpgradeError):
    """Saved documents could not be put back because different ones now hold their place."""


def open_mongo(url: str) -> MongoClient:
    """Connect (and ping) with a short timeout: an unreachable server fails within seconds."""
    return connect(url, timeout_ms=CONNECT_TIMEOUT_MS)


@contextmanager
def _mongo_errors(action: str) -> Iterator[None]:
    # pymongo's messages may carry host lists but never credentials; we keep only the class
    # name anyway, as mender_upgrade.tasks.mongo.connect does.
    try:
        yield
    except ConnectionFailure as exc:
        raise MongoUnreachable(f"MongoDB stopped answering while trying to {action}: {exc.__class__.__name__}",
                               "check mender-mongo; running the command again is safe") from exc
    except OperationFailure as exc:
        raise UpgradeError(f"MongoDB refused to {action}: {exc.code} {exc.details.get('errmsg', '') if exc.details else ''}",
                           "see the mongo log; nothing was deleted by this step") from exc


# ---------------------------------------------------------------------------------------------
# where the data is


@dataclass(frozen=True)
class Scope:
    """One tenant's deviceauth data: a whole database (<= 3.5) or one `tenant_id` in it (>= 3.6)."""

    database: str
    tenant_id: str
    tenant_field: bool

    @property
    def filter(self) -> dict:
        return {"tenant_id": self.tenant_id} if self.tenant_field else {}

    def filter_for(self, collection: str) -> dict:
        # Tokens carry the tenant as the `mender.tenant` claim, not `tenant_id` (deviceauth's 2.0.0
        # migration adds tenant_id to devices and auth sets only); their _id is the auth set's,
        # unique in the collection, so they are matched by _id alone, as upstream deletes them.
        return {} if collection == "tokens" else self.filter

    @property
    def tenant_label(self) -> str:
        return self.tenant_id or "(default)"


def deviceauth_databases(client: MongoClient) -> list[str]:
    with _mongo_errors("list databases"):
        names = client.list_database_names()
    return sorted(n for n in names if n == DEVICEAUTH or n.startswith(DEVICEAUTH + "-"))


def detect_layout(client: MongoClient) -> Layout:
    """`tenant_id` on the documents of `deviceauth` means >= 3.6; otherwise one DB per tenant."""
    databases = deviceauth_databases(client)
    if not databases:
        with _mongo_errors("list databases"):
            others = sorted(client.list_database_names())
        raise NoDeviceauthDatabase(f"MongoDB has no deviceauth database (databases: {', '.join(others) or 'none'})",
                                   "is --mongo-url the Mender database? deviceauth creates its database at start")
    if DEVICEAUTH in databases:
        db = client[DEVICEAUTH]
        with _mongo_errors("inspect deviceauth"):
            if any(db[c].find_one({"tenant_id": {"$exists": True}}, {"_id": 1}) for c in ("devices", "auth_sets")):
                return Layout.TENANT_FIELD
    return Layout.PER_TENANT_DATABASES


def list_scopes(client: MongoClient, layout: Layout) -> tuple[list[Scope], list[str]]:
    """Every tenant's scope, and the deviceauth databases this layout does not use."""
    databases = deviceauth_databases(client)
    if layout is Layout.PER_TENANT_DATABASES:
        scopes = [Scope(name, name.removeprefix(DEVICEAUTH).removeprefix("-"), False) for name in databases]
        return scopes, []
    db = client[DEVICEAUTH]
    with _mongo_errors("list tenants"):
        tenants = set(db.devices.distinct("tenant_id")) | set(db.auth_sets.distinct("tenant_id"))
    scopes = [Scope(DEVICEAUTH, t, True) for t in sorted(t for t in tenants if isinstance(t, str))]
    # Per-tenant databases left behind by the 3.6 migration: deviceauth no longer reads them.
    return scopes, [d for d in databases if d != DEVICEAUTH]


def select_scopes(scopes: list[Scope], ignored: list[str], databases: Iterable[str] | None = None,
                  tenants: Iterable[str] | None = None) -> list[Scope]:
    """Narrow to the given databases/tenants; an unknown name is an error listing the known ones."""
    chosen = list(scopes)
    known_dbs = sorted({s.database for s in scopes})
    for name in databases or []:
        if name in ignored:
            raise CleanupScopeNotFound(
                f"database {name!r} is not used by deviceauth in this layout (every tenant lives in {DEVICEAUTH!r})",
                f"use --tenant {name.removeprefix(DEVICEAUTH + '-')} instead")
        if name not in known_dbs:
            raise CleanupScopeNotFound(f"database {name!r} does not exist or is not a deviceauth database",
                                       f"deviceauth databases: {', '.join(known_dbs) or 'none'}")
    if databases:
        chosen = [s for s in chosen if s.database in set(databases)]
    known_tenants = sorted({s.tenant_id for s in scopes})
    for tenant in tenants or []:
        if tenant not in known_tenants:
            raise CleanupScopeNotFound(f"tenant {tenant!r} has no deviceauth data",
                                       "tenants: " + ", ".join(repr(t) for t in known_tenants))
    if tenants:
        chosen = [s for s in chosen if s.tenant_id in set(tenants)]
    return chosen


# ---------------------------------------------------------------------------------------------
# finding


@dataclass
class ScopeLeftovers:
    scope: Scope
    # collection -> the raw documents, exactly as stored (saved byte for byte before deleting)
    documents: dict[str, list[RawBSONDocument]] = field(default_factory=lambda: {c: [] for c in COLLECTIONS})

    def ids(self, collection: str) -> list[Any]:
        return [d["_id"] for d in self.documents[collection]]

    @property
    def count(self) -> int:
        return sum(len(docs) for docs in self.documents.values())


@dataclass
class Leftovers:
    layout: Layout
    scopes: list[ScopeLeftovers]  # every selected scope, also those without leftovers
    totals: dict[str, dict[str, int]]  # database -> collection -> documents when found
    ignored_databases: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.scopes)

    def by_namespace(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.scopes:
            for c in COLLECTIONS:
                out[f"{s.scope.database}.{c}"] = out.get(f"{s.scope.database}.{c}", 0) + len(s.documents[c])
        return out

    def fingerprint(self) -> str:
        """SHA-256 over every (database, tenant, collection, _id): equal sets, equal fingerprints."""
        items = sorted(f"{s.scope.database}\0{s.scope.tenant_id}\0{c}\0{_id_text(i)}"
                       for s in self.scopes for c in COLLECTIONS for i in s.ids(c))
        return hashlib.sha256("\n".join(items).encode()).hexdigest()

    def rows(self, sample: int = 2) -> list[dict[str, Any]]:
        """One row per database/tenant: counts and a few example ids (the dry-run table)."""
        rows = []
        for s in self.scopes:
            examples = [_id_text(i) for c in ("devices", "auth_sets") for i in s.ids(c)][:sample]
            rows.append({"database": s.scope.database, "tenant": s.scope.tenant_label,
                         "devices": len(s.documents["devices"]), "auth_sets": len(s.documents["auth_sets"]),
                         "tokens": len(s.documents["tokens"]), "sample": ", ".join(examples)})
        return rows


def _id_text(value: Any) -> str:
    return value if isinstance(value, str) else json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS)


def _key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:  # an embedded-document _id: compare by its BSON bytes
        return bson.encode({"v": value})


def _batches(items: list, size: int = BATCH) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _fetch_raw(db, collection: str, scope: Scope, ids: list[Any]) -> list[RawBSONDocument]:
    coll = db.get_collection(collection, codec_options=RAW)
    found: dict[Any, RawBSONDocument] = {}
    for batch in _batches(ids):
        for doc in coll.find({**scope.filter_for(collection), "_id": {"$in": batch}}):
            found[_key(doc["_id"])] = doc
    return [found[_key(i)] for i in ids if _key(i) in found]  # in the order found


def _find_in_scope(client: MongoClient, scope: Scope) -> ScopeLeftovers:
    # Compared in Python rather than with $lookup: works the same on every MongoDB 3.4-7.0 and
    # keeps tenants apart in the >= 3.6 layout without pipeline $lookup (3.6+ only).
    db = client[scope.database]
    present, flagged, flagged_ids = set(), set(), []
    for d in db.devices.find(scope.filter, {"_id": 1, "decommissioning": 1}):
        present.add(_key(d["_id"]))
        if d.get("decommissioning") is True:
            flagged.add(_key(d["_id"]))
            flagged_ids.append(d["_id"])
    auth_set_ids = [a["_id"] for a in db.auth_sets.find(scope.filter, {"_id": 1, "device_id": 1})
                    if _key(a.get("device_id")) not in present or _key(a.get("device_id")) in flagged]
    result = ScopeLeftovers(scope)
    result.documents["devices"] = _fetch_raw(db, "devices", scope, flagged_ids)
    result.documents["auth_sets"] = _fetch_raw(db, "auth_sets", scope, auth_set_ids)
    result.documents["tokens"] = _fetch_raw(db, "tokens", scope, _token_ids(result.ids("auth_sets")))
    return result


def _token_ids(auth_set_ids: list[Any]) -> list[Any]:
    """A token's _id is its auth set's id: a string in older deviceauth, the same UUID as BSON
    binary subtype 4 in newer ones (go-lib-micro's uuid type). Look for both forms."""
    out = []
    for value in auth_set_ids:
        out.append(value)
        if isinstance(value, str):
            try:
                out.append(Binary.from_uuid(uuid.UUID(value), UuidRepresentation.STANDARD))
            except ValueError:
                pass
    return out


def _totals(client: MongoClient, databases: Iterable[str]) -> dict[str, dict[str, int]]:
    return {name: {c: client[name][c].count_documents({}) for c in COLLECTIONS} for name in sorted(set(databases))}


def find_in_scopes(client: MongoClient, layout: Layout, scopes: list[Scope],
                   ignored: list[str] | None = None) -> Leftovers:
    with _mongo_errors("find decommissioning leftovers"):
        found = [_find_in_scope(client, s) for s in scopes]
        totals = _totals(client, [s.database for s in scopes])
    return Leftovers(layout, found, totals, list(ignored or []))


def find_decommissioned_leftovers(client: MongoClient, databases: Iterable[str] | None = None,
                                  tenants: Iterable[str] | None = None) -> Leftovers:
    """Read-only: the leftovers of every tenant (or of the given databases/tenants)."""
    layout = detect_layout(client)
    scopes, ignored = list_scopes(client, layout)
    chosen = select_scopes(scopes, ignored, list(databases or []), list(tenants or []))
    return find_in_scopes(client, layout, chosen, ignored)


# ---------------------------------------------------------------------------------------------
# saving, deleting, verifying


@dataclass
class CleanupReceipt:
    run_id: str
    target: str
    key: str
    manifest_key: str
    size: int
    sha256: str
    documents: dict[str, int]  # "database.collection" -> documents saved
    fingerprint: str
    created_utc: str


def cleanup_prefix(run_id: str) -> str:
    # Two levels deep: backup listings only read `<backup_id>/manifest.json`.
    return f"cleanup/{run_id}"


def _entries(leftovers: Leftovers) -> Iterator[bytes]:
    for s in leftovers.scopes:
        for collection in RESTORE_ORDER:
            for raw in s.documents[collection]:
                # the RawBSONDocument is embedded byte for byte, never re-encoded
                yield bson.encode({"db": s.scope.database, "collection": collection,
                                   "tenant_id": s.scope.tenant_id, "document": raw})


def save_leftovers(store: BackupStore, leftovers: Leftovers, run_id: str) -> CleanupReceipt:
    """Write the exact documents to `cleanup/<run_id>/leftovers.bson`, read them back, check the
    SHA-256, then write `manifest.json` beside them (written last: no manifest, no saved copy)."""
    prefix = cleanup_prefix(run_id)
    key, manifest_key = f"{prefix}/{LEFTOVERS_OBJECT}", f"{prefix}/{MANIFEST_OBJECT}"
    try:
        with IterStream(_entries(leftovers)) as stream:
            written = store.upload_stream(key, stream)
        size, sha = sha256_of_chunks(store.read_chunks(key))
    except OSError as exc:  # a local target: missing, not a folder, read-only (full is StoreFull)
        raise UpgradeError(f"saving the leftovers to {store.uri}/{key} failed: {exc.strerror or exc}",
                           "nothing was deleted; fix the backup target and run again") from exc
    if (size, sha) != (written.size, written.sha256):
        raise ChecksumMismatch(f"{store.uri}/{key} reads back as {size} bytes sha256 {sha[:12]}…, written as "
                               f"{written.size} bytes sha256 {written.sha256[:12]}…",
                               "nothing was deleted; check the backup target and run again")
    counts = {ns: n for ns, n in leftovers.by_namespace().items() if n}
    receipt = CleanupReceipt(run_id=run_id, target=store.uri, key=key, manifest_key=manifest_key, size=size,
                             sha256=sha, documents=counts, fingerprint=leftovers.fingerprint(),
                             created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    manifest = {**receipt.__dict__, "layout": leftovers.layout.value, "format":
                "concatenated BSON documents {db, collection, tenant_id, document}",
                "ids": [{"db": s.scope.database, "tenant_id": s.scope.tenant_id, "collection": c,
                         "ids": [_id_text(i) for i in s.ids(c)]}
                        for s in leftovers.scopes for c in COLLECTIONS if s.documents[c]]}
    store.put_bytes(manifest_key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return receipt


def delete_leftovers(client: MongoClient, leftovers: Leftovers, batch_size: int = BATCH) -> dict[str, int]:
    """Delete exactly the found documents by `_id` (within their tenant), in batches.
    Returns documents deleted per "database.collection"; already-gone ones count 0."""
    deleted: dict[str, int] = {}
    with _mongo_errors("delete leftovers"):
        for s in leftovers.scopes:
            db = client[s.scope.database]
            for collection in DELETE_ORDER:
                ns = f"{s.scope.database}.{collection}"
                for batch in _batches(s.ids(collection), batch_size):
                    result = db[collection].delete_many({**s.scope.filter_for(collection), "_id": {"$in": batch}})
                    deleted[ns] = deleted.get(ns, 0) + result.deleted_count
    return deleted


@dataclass
class CleanupReport:
    layout: Layout
    before: dict[str, int]     # "database.collection" -> documents before
    after: dict[str, int]      # ... and after
    leftovers: dict[str, int]  # found before deleting
    deleted: dict[str, int]    # deleted by this run
    remaining: int             # leftovers found again after deleting (0 when verified)
    receipt: CleanupReceipt | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Per database and collection: documents before, leftovers found, deleted, after."""
        rows = []
        for ns in sorted(self.before, key=lambda n: (n.rsplit(".", 1)[0], COLLECTIONS.index(n.rsplit(".", 1)[1]))):
            database, collection = ns.rsplit(".", 1)
            rows.append({"database": database, "collection": collection, "before": self.before[ns],
                         "leftovers": self.leftovers.get(ns, 0), "deleted": self.deleted.get(ns, 0),
                         "after": self.after[ns]})
        return rows


def _flat(totals: dict[str, dict[str, int]]) -> dict[str, int]:
    return {f"{db}.{c}": n for db, colls in totals.items() for c, n in colls.items()}


def verify_cleanup(client: MongoClient, leftovers: Leftovers, deleted: dict[str, int] | None = None) -> CleanupReport:
    """Re-run the same queries: zero leftovers must remain, and every collection must hold as many
    non-leftover documents as before. Raises `CleanupNotVerified` otherwise."""
    again = find_in_scopes(client, leftovers.layout, [s.scope for s in leftovers.scopes], leftovers.ignored_databases)
    before, after, found = _flat(leftovers.totals), _flat(again.totals), leftovers.by_namespace()
    problems = []
    if again.count:
        problems.append(f"{again.count} leftover document(s) remain: "
                        + ", ".join(f"{ns} {n}" for ns, n in again.by_namespace().items() if n))
    for ns in sorted(before):
        expected = before[ns] - found.get(ns, 0)
        if after[ns] != expected:
            problems.append(f"{ns} holds {after[ns]} documents, expected {expected} "
                            f"({before[ns]} before, {found.get(ns, 0)} leftovers)")
    if problems:
        raise CleanupNotVerified("cleanup not verified: " + "; ".join(problems),
                                 "the saved documents can be put back with `mender-upgrade cleanup --restore`; "
                                 "were Mender services writing meanwhile? stop them and run again")
    return CleanupReport(leftovers.layout, before, after, found, dict(deleted or {}), again.count)


def apply_cleanup(client: MongoClient, store: BackupStore, run_id: str, databases: Iterable[str] | None = None,
                  tenants: Iterable[str] | None = None, log: Callable[[str], None] = print) -> CleanupReport:
    """Find -> save (verified) -> delete -> verify. Nothing is deleted unless the save succeeded."""
    leftovers = find_decommissioned_leftovers(client, databases, tenants)
    if not leftovers.count:
        log("no decommissioning leftovers: nothing to save or delete")
        return verify_cleanup(client, leftovers, {})
    receipt = save_leftovers(store, leftovers, run_id)
    log(f"saved {leftovers.count} document(s) to {store.uri}/{receipt.key} (sha256 {receipt.sha256})")
    deleted = delete_leftovers(client, leftovers)
    log(f"deleted {sum(deleted.values())} document(s)")
    report = verify_cleanup(client, leftovers, deleted)
    report.receipt = receipt
    return report


# ---------------------------------------------------------------------------------------------
# restoring


@dataclass
class RestoreReport:
    restored: dict[str, int]       # "database.collection" -> documents inserted
    already_present: dict[str, int]  # identical document already there (restore run twice)


def read_saved(store: BackupStore, key: str) -> tuple[dict, list[RawBSONDocument]]:
    """The manifest and the saved entries; the SHA-256 must match the manifest's."""
    if key.endswith(MANIFEST_OBJECT):
        key = key[: -len(MANIFEST_OBJECT)] + LEFTOVERS_OBJECT
    manifest_key = key.rsplit("/", 1)[0] + "/" + MANIFEST_OBJECT if "/" in key else MANIFEST_OBJECT
    try:
        manifest = json.loads(store.get_bytes(manifest_key))
        data = store.get_bytes(key)
    except FileNotFoundError as exc:
        raise UpgradeError(f"{exc.filename} not found: a saved copy needs both {LEFTOVERS_OBJECT} and "
                           f"{MANIFEST_OBJECT} (its SHA-256)",
                           "give a local path to either file of a cleanup/<run-id>/ folder, or its key in "
                           "--target") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != manifest["sha256"] or len(data) != manifest["size"]:
        raise ChecksumMismatch(f"{store.uri}/{key} has sha256 {sha[:12]}… ({len(data)} bytes), the manifest "
                               f"records {manifest['sha256'][:12]}… ({manifest['size']} bytes)",
                               "this copy is damaged; nothing was restored")
    return manifest, bson.decode_all(data, RAW)


def restore_leftovers(client: MongoClient, store: BackupStore, key: str) -> RestoreReport:
    """Insert saved documents back, byte for byte. Documents already there unchanged are skipped
    (running it twice is harmless); a different document in their place is a `RestoreConflict`."""
    _, entries = read_saved(store, key)
    groups: dict[tuple[str, str], list[RawBSONDocument]] = {}
    for order in RESTORE_ORDER:  # devices before their auth sets before their tokens
        for e in entries:
            if e["collection"] == order:
                groups.setdefault((e["db"], e["collection"]), []).append(e["document"])
    report, conflicts = RestoreReport({}, {}), []
    with _mongo_errors("restore saved documents"):
        for (database, collection), docs in groups.items():
            ns = f"{database}.{collection}"
            coll = client[database].get_collection(collection, codec_options=RAW)
            inserted = 0
            for batch in _batches(docs):
                try:  # bulk_write, not insert_many: its result counts raw documents too
                    inserted += coll.bulk_write([InsertOne(d) for d in batch], ordered=False).inserted_count
                except BulkWriteError as exc:
                    inserted += exc.details.get("nInserted", 0)
                    if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                        raise UpgradeError(f"restoring {ns} failed: {exc.details['writeErrors'][0].get('errmsg')}",
                                           "see the mongo log") from exc
                    for error in exc.details["writeErrors"]:
                        doc = batch[error["index"]]
                        there = coll.find_one({"_id": doc["_id"]})
                        if there is not None and there.raw == doc.raw:
                            report.already_present[ns] = report.already_present.get(ns, 0) + 1
                        else:
                            conflicts.append(f"{ns} {_id_text(doc['_id'])}")
            report.restored[ns] = inserted
    if conflicts:
        raise RestoreConflict(f"{len(conflicts)} saved document(s) were not restored because another document "
                              f"holds their _id or unique key: {', '.join(conflicts[:5])}"
                              f"{' …' if len(conflicts) > 5 else ''}",
                              "the device probably registered again; the other documents were restored")
    return report


def undo_cleanup(client: MongoClient, store: BackupStore, run_id: str) -> RestoreReport | None:
    """Put back what the cleanup of `run_id` deleted (the run failed before its downtime).
    Nothing saved means nothing was deleted: deletion only starts after a verified save."""
    key = f"{cleanup_prefix(run_id)}/{LEFTOVERS_OBJECT}"
    if f"{cleanup_prefix(run_id)}/{MANIFEST_OBJECT}" not in store.list_keys(cleanup_prefix(run_id)):
        return None
    return restore_leftovers(client, store, key)


# ---------------------------------------------------------------------------------------------
# read-only: old clients (before the 2.6 -> 2.7 hop)


@dataclass
class OldClients:
    below: str
    old: int                  # devices whose client is older than `below`
    total: int                # devices that report a client version
    unknown: int              # devices with no or an unparsable version
    versions: dict[str, int]  # the old versions seen -> devices


_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\.(\d+)")
CLIENT_VERSION_FIELDS = ("inventory-mender_client_version", "mender_client_version")  # scoped (2.x), unscoped


def _version(text: Any) -> tuple[int, int, int] | None:
    m = _VERSION.match(text) if isinstance(text, str) else None
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def count_old_clients(client: MongoClient, below: str = OLD_CLIENT_BELOW) -> OldClients:
    """Devices in inventory (`inventory` and per-tenant `inventory-*`) whose reported mender client
    is older than `below`: before 2.6 -> 2.7 they need the storage proxy's old address."""
    limit = _version(below)
    if limit is None:
        raise UpgradeError(f"{below!r} is not a version X.Y.Z", "pass e.g. 1.7.1")
    old = total = unknown = 0
    versions: Counter[str] = Counter()
    projection = {f"attributes.{f}.value": 1 for f in CLIENT_VERSION_FIELDS}
    with _mongo_errors("read inventory"):
        databases = [n for n in client.list_database_names() if n == "inventory" or n.startswith("inventory-")]
        for name in sorted(databases):
            for doc in client[name].devices.find({}, projection):
                attributes = doc.get("attributes") or {}
                value = next((attributes[f].get("value") for f in CLIENT_VERSION_FIELDS
                              if isinstance(attributes.get(f), dict)), None)
                parsed = _version(value)
                if parsed is None:
                    unknown += 1
                    continue
                total += 1
                if parsed < limit:
                    old += 1
                    versions[str(value)] += 1  # a str: _version parsed it
    return OldClients(below, old, total, unknown, dict(sorted(versions.items())))
