#!/usr/bin/env python3
"""mongod stand-in: a MongoDB-wire server built on mongoeco (test bed only).

This is NOT MongoDB.  It stands in for the official ``mongo:4.4`` / ``mongo:5.0``
images on machines where no real mongod can be installed.  It serves the
MongoDB wire protocol with ``mongoeco.wire.proxy.AsyncMongoEcoProxyServer`` over
``mongoeco.engines.sqlite.SQLiteEngine(<dbpath>/standin.sqlite)`` and adds a
thin layer that makes it look like the mongod version being stood in for:

* ``buildInfo``/``buildinfo``, ``serverStatus`` and ``hello``/``isMaster`` report
  ``version`` = env ``MONGO_VERSION`` (default ``4.4.29``) and the matching
  ``maxWireVersion`` (override with env ``STANDIN_MAX_WIRE_VERSION``);
* ``getParameter {featureCompatibilityVersion: 1}`` and
  ``setFeatureCompatibilityVersion`` with mongod's rules, FCV persisted in
  ``<dbpath>/standin-fcv.json``;
* start-up refusal ("UPGRADE PROBLEM ...", exit code 62) when the persisted FCV
  is not usable by this server version (a skipped major version);
* ``mongod.lock`` in dbpath (two servers on one dbpath are refused, exit 100);
* shims for three mongoeco 4.11.0 bugs (1: lowercase ``buildinfo``,
  2: ``renameCollection`` sent to ``admin``, 3: ``$bsonSize`` of Decimal128)
  and four speed shims (4: O(n) ``_id`` scan per insert, 5: wire ``insert``
  one document at a time, 6: ``inspect.signature`` per decoded document,
  7: O(n^2) unique index builds); see README.md.

Start: ``python3 mongo_standin_server.py [--dbpath /data/db] [--bind_ip 0.0.0.0]
[--port 27017]``.  Prints ``READY mongodb://HOST:PORT/`` once it accepts
connections; SIGTERM/SIGINT stop it cleanly (exit 0).

The private mongoeco internals patched here are those of mongoeco 4.11.0; the
launcher refuses to run with any other version unless
``STANDIN_ALLOW_UNTESTED_MONGOECO=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import fcntl
import json
import os
import platform
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

MONGOECO_PIN = "4.11.0"
DEFAULT_MONGO_VERSION = "4.4.29"
SQLITE_FILE = "standin.sqlite"
FCV_FILE = "standin-fcv.json"
LOCK_FILE = "mongod.lock"
SHUTDOWN_DRAIN_SECONDS = 8.0  # docker stop sends SIGKILL after 10 s

# mongod exit codes (src/mongo/util/exit_code.h)
EXIT_BADOPTIONS = 2
EXIT_NEED_UPGRADE = 62
EXIT_DBPATH = 100  # "ExitCode::dbException" used for dbpath/lock problems

# major.minor -> (previous major.minor, maxWireVersion)
SERVER_LINES: dict[str, tuple[str, int]] = {
    "4.0": ("3.6", 7),
    "4.2": ("4.0", 8),
    "4.4": ("4.2", 9),
    "5.0": ("4.4", 13),
    "6.0": ("5.0", 17),
    "7.0": ("6.0", 21),
    "8.0": ("7.0", 25),
}

# Wording of mongod's start-up refusal, per server line (5.0 copied from a real
# mongod 5.0 log; the others follow the same template).
_FCV_DOCS = "https://docs.mongodb.com/master/release-notes/{doc}-compatibility/#feature-compatibility"
_UPGRADE_DOCS = "https://docs.mongodb.com/master/release-notes/{doc}/#upgrade-procedures"
_STARTUP_EXPECTED = {
    # server line: (docs version in message, "expected" list as printed)
    "4.4": ("4.4", "'4.2' or '4.3' or '4.4"),
    "5.0": ("4.4", "'4.4' or '4.9' or '5.0"),
    "6.0": ("5.0", "'5.0' or '5.3' or '6.0"),
}


def log(severity: str, component: str, log_id: int, msg: str, **attr: Any) -> None:
    """One mongod-4.4-style structured JSON log line on stdout."""
    now = datetime.datetime.now(datetime.UTC)
    entry: dict[str, Any] = {
        "t": {"$date": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+00:00"},
        "s": severity,
        "c": component,
        "id": log_id,
        "ctx": "initandlisten",
        "msg": msg,
    }
    if attr:
        entry["attr"] = attr
    print(json.dumps(entry, separators=(",", ":")), flush=True)


# --------------------------------------------------------------------------
# version / FCV model (pure Python: no mongoeco needed, unit-testable)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerVersion:
    version: str  # e.g. "4.4.29"
    line: str  # e.g. "4.4"
    previous: str  # e.g. "4.2"
    max_wire_version: int

    @classmethod
    def parse(cls, version: str, max_wire_override: str | None = None) -> "ServerVersion":
        parts = version.strip().split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
            raise ValueError(f"MONGO_VERSION must look like X.Y.Z, got {version!r}")
        line = f"{int(parts[0])}.{int(parts[1])}"
        if line not in SERVER_LINES:
            raise ValueError(f"MONGO_VERSION {version!r}: unsupported server line {line} (known: {', '.join(SERVER_LINES)})")
        previous, wire = SERVER_LINES[line]
        if max_wire_override:
            wire = int(max_wire_override)
        while len(parts) < 3:
            parts.append("0")
        return cls(".".join(parts), line, previous, wire)

    @property
    def version_array(self) -> list[int]:
        nums = [int(p) for p in self.version.split(".")[:3]]
        return nums + [0]

    @property
    def allowed_fcvs(self) -> tuple[str, str]:
        return (self.previous, self.line)


class FcvStore:
    """featureCompatibilityVersion persisted as JSON next to the data."""

    def __init__(self, dbpath: str) -> None:
        self.path = os.path.join(dbpath, FCV_FILE)

    def load(self) -> str | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            return None
        version = doc.get("version")
        if not isinstance(version, str):
            raise ValueError(f"{self.path}: no 'version' string")
        return version

    def save(self, version: str) -> None:
        tmp = self.path + ".tmp"
        doc = {"_id": "featureCompatibilityVersion", "version": version}
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def startup_fcv_error(server: ServerVersion, fcv: str) -> str | None:
    """mongod's refusal text when persisted FCV cannot be used, else None."""
    if fcv in server.allowed_fcvs:
        return None
    doc_version, expected = _STARTUP_EXPECTED.get(
        server.line, (server.previous, f"'{server.previous}' or '{server.line}")
    )
    fcv_docs = _FCV_DOCS.format(doc=doc_version)
    return (
        "UPGRADE PROBLEM: Found an invalid featureCompatibilityVersion document "
        "(ERROR: Location4926900: Invalid featureCompatibilityVersion document in "
        f'admin.system.version: {{ _id: "featureCompatibilityVersion", version: "{fcv}" }}. '
        f"See {fcv_docs}. :: caused by :: Invalid value for "
        f"featureCompatibilityVersiondocument in admin.system.version, found {fcv}, "
        f"expected {expected}. See {fcv_docs}.). If the current "
        f"featureCompatibilityVersion is below {server.previous}, see the documentation "
        f"on upgrading at {_UPGRADE_DOCS.format(doc=doc_version)}."
    )


class CommandError(Exception):
    def __init__(self, code: int, code_name: str, errmsg: str) -> None:
        super().__init__(errmsg)
        self.code = code
        self.code_name = code_name
        self.errmsg = errmsg

    def document(self) -> dict[str, Any]:
        return {"ok": 0.0, "errmsg": self.errmsg, "code": self.code, "codeName": self.code_name}


class StandinAdmin:
    """Admin commands the stand-in answers itself (independent of mongoeco)."""

    COMMANDS = frozenset(
        {"buildInfo", "buildinfo", "getParameter", "setFeatureCompatibilityVersion"}
    )

    def __init__(self, server: ServerVersion, fcv_store: FcvStore, fcv: str, storage_engine: str = "wiredTiger") -> None:
        self.server = server
        self.fcv_store = fcv_store
        self.fcv = fcv
        self.storage_engine = storage_engine

    def build_info(self) -> dict[str, Any]:
        return {
            "version": self.server.version,
            "gitVersion": "0000000000000000000000000000000000000000",
            "modules": [],
            "allocator": "tcmalloc",
            "javascriptEngine": "mozjs",
            "sysInfo": "deprecated",
            "versionArray": self.server.version_array,
            "openssl": {"running": "stand-in", "compiled": "stand-in"},
            "buildEnvironment": {"distmod": "mongo-standin", "target_arch": platform.machine() or "x86_64", "target_os": "linux"},
            "bits": 64,
            "debug": False,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "storageEngines": ["devnull", "ephemeralForTest", "wiredTiger"],
            "standin": "mongoeco " + MONGOECO_PIN,
            "ok": 1.0,
        }

    def handle(self, name: str, db_name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        try:
            if name in ("buildInfo", "buildinfo"):
                return self.build_info()
            if name == "getParameter":
                return self.get_parameter(db_name, cmd)
            if name == "setFeatureCompatibilityVersion":
                return self.set_fcv(db_name, cmd)
        except CommandError as err:
            return err.document()
        raise AssertionError(name)

    def get_parameter(self, db_name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if db_name != "admin":
            raise CommandError(13, "Unauthorized", "getParameter may only be run against the admin database.")
        want_all = cmd.get("getParameter") in ("*", {"allParameters": True})
        result: dict[str, Any] = {}
        if want_all or "featureCompatibilityVersion" in cmd:
            result["featureCompatibilityVersion"] = {"version": self.fcv}
        if not result:
            raise CommandError(72, "InvalidOptions", "no option found to get")
        result["ok"] = 1.0
        return result

    def set_fcv(self, db_name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if db_name != "admin":
            raise CommandError(
                13, "Unauthorized", "setFeatureCompatibilityVersion may only be run against the admin database."
            )
        target = cmd.get("setFeatureCompatibilityVersion")
        if not isinstance(target, str):
            raise CommandError(
                14, "TypeMismatch",
                "Command argument must be of type String, but was of type "
                f"{type(target).__name__} in: setFeatureCompatibilityVersion",
            )
        allowed = self.server.allowed_fcvs
        if target not in allowed:
            raise CommandError(
                2, "BadValue",
                f"Invalid command argument. Expected '{allowed[1]}' or '{allowed[0]}', found {target} in: "
                f'{{ setFeatureCompatibilityVersion: "{target}" }}. See '
                f"{_FCV_DOCS.format(doc=self.server.line)}.",
            )
        if target != self.fcv:
            self.fcv_store.save(target)
            log("I", "COMMAND", 20459, "Setting featureCompatibilityVersion", newVersion=target)
            self.fcv = target
        return {"ok": 1.0}


# --------------------------------------------------------------------------
# mongoeco integration
# --------------------------------------------------------------------------

_WIRE_INTERNAL_KEYS = frozenset(
    {"$db", "$readPreference", "$clusterTime", "lsid", "txnNumber", "autocommit", "startTransaction", "$audit"}
)


def _command_name(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in body:
        if key not in _WIRE_INTERNAL_KEYS:
            return key if isinstance(key, str) else None
    return None


@dataclass(frozen=True)
class StandinRequest:
    """Request context for commands answered by StandinAdmin (not mongoeco)."""

    db_name: str
    command_name: str
    command_document: dict[str, Any]
    raw_body: dict[str, Any]


def apply_module_shims() -> None:
    """Process-wide patches of mongoeco 4.11.0 (shims 1 and 2 are per-server,
    see install_executor_hooks).  Shims 4-7 only change speed, not results;
    ``STANDIN_DISABLE_PERF_SHIMS=1`` turns them off for comparison."""
    _apply_bson_size_shim()
    if os.environ.get("STANDIN_DISABLE_PERF_SHIMS") != "1":
        _apply_insert_scan_shim()
        _apply_batch_insert_shim()
        _apply_decode_signature_shim()
        _apply_unique_index_build_shim()


def _apply_bson_size_shim() -> None:
    """Shim 3: ``$bsonSize`` (listDatabases/dbStats) crashes on Decimal128."""
    import bson
    from bson.decimal128 import Decimal128
    from mongoeco.core.aggregation import runtime

    if getattr(runtime._bson_value_size, "_standin_shim", False):
        return
    original = runtime._bson_value_size

    def _bson_value_size(value: Any) -> int:
        if isinstance(value, Decimal128) or type(value).__name__ == "Decimal128":
            return 16
        try:
            return original(value)
        except Exception:
            # Element size minus type byte, empty key and document framing.
            return len(bson.encode({"": value})) - 4 - 1 - 1 - 1

    _bson_value_size._standin_shim = True  # type: ignore[attr-defined]
    runtime._bson_value_size = _bson_value_size


def _apply_unique_index_build_shim() -> None:
    """Shim 7: building a unique index compares every document with every
    earlier one (``unique_index_conflict(doc, seen)`` for all pairs: O(n^2),
    ~1 s for 400 documents).  Without a collation that pairwise test is "the
    two documents' index-key sets intersect", so a hash set of the keys seen so
    far answers it in O(1); the pairwise calls that remain return at once."""
    import __future__
    import inspect

    from mongoeco.engines import _sqlite_index_admin as admin_module
    from mongoeco.engines import sqlite as sqlite_module

    original = sqlite_module._sqlite_create_index
    if getattr(original, "_standin_shim", False):
        return
    # With the hashed check each earlier document only has to be shown once
    # (to register its keys): let the build loop pass just the latest one.
    hashed_build = original
    needle = "for existing_document in seen_documents:"
    try:
        source = inspect.getsource(admin_module.create_index)
        if source.count(needle) == 1:
            source = source.replace(
                needle,
                "for existing_document in (seen_documents[-1:] if getattr("
                "unique_index_conflict, '_standin_hashed', False) else seen_documents):",
            )
            namespace: dict[str, Any] = {}
            code = compile(source, admin_module.__file__, "exec",
                           flags=__future__.annotations.compiler_flag, dont_inherit=True)
            exec(code, admin_module.__dict__, namespace)  # noqa: S102 - pinned mongoeco source
            hashed_build = namespace["create_index"]
    except (OSError, TypeError, SyntaxError):
        hashed_build = original

    def create_index(conn, **kwargs):
        pairwise = kwargs.get("unique_index_conflict")
        engine = getattr(pairwise, "__self__", None)
        if not kwargs.get("unique") or kwargs.get("collation") is not None or engine is None:
            return original(conn, **kwargs)
        seen_keys: dict[Any, None] = {}
        registered: set[int] = set()
        state: dict[str, Any] = {"doc": None, "keys": frozenset()}

        def keys_of(document, index):
            return engine._unique_index_keys(document, index["fields"])

        def fast_conflict(candidate, existing, index):
            new_existing = None
            if id(existing) not in registered:
                registered.add(id(existing))
                new_existing = keys_of(existing, index)
                seen_keys.update(dict.fromkeys(new_existing))
            if state["doc"] is not candidate:
                state["doc"] = candidate
                state["keys"] = keys_of(candidate, index)
                for key in state["keys"]:
                    if key in seen_keys:
                        return key
                return None
            if new_existing:
                common = state["keys"] & new_existing
                if common:
                    return next(iter(common))
            return None

        fast_conflict._standin_hashed = True  # type: ignore[attr-defined]
        kwargs["unique_index_conflict"] = fast_conflict
        return hashed_build(conn, **kwargs)

    create_index._standin_shim = True  # type: ignore[attr-defined]
    sqlite_module._sqlite_create_index = create_index


def _apply_decode_signature_shim() -> None:
    """Shim 6: SQLiteEngine._decode_codec_payload calls inspect.signature() for
    every decoded document (~60 % of read/scan CPU); cache the answer."""
    import inspect

    from mongoeco.engines.sqlite import SQLiteEngine

    cache: dict[Any, bool] = {}

    def _decode_codec_payload(self, payload, *, preserve_bson_wrappers):
        decode = self._codec.decode
        key = getattr(decode, "__func__", decode)
        takes_flag = cache.get(key)
        if takes_flag is None:
            try:
                takes_flag = "preserve_bson_wrappers" in inspect.signature(decode).parameters
            except (TypeError, ValueError):
                takes_flag = False
            cache[key] = takes_flag
        if not takes_flag:
            return decode(payload)
        return decode(payload, preserve_bson_wrappers=preserve_bson_wrappers)

    SQLiteEngine._decode_codec_payload = _decode_codec_payload


def _apply_batch_insert_shim() -> None:
    """Shim 5: the wire ``insert`` command inserts document by document (one
    SQLite transaction, thread hop and change-dispatch round each, ~5 ms/doc).
    Route it through ``AsyncCollection.insert_many`` (engine batch inserts,
    same ordered/unordered and duplicate-key semantics) and rebuild the same
    reply.  Anything unusual falls back to the original implementation."""
    from mongoeco.api._async import _database_admin_write_commands as wc
    from mongoeco.errors import BulkWriteError

    service = wc.DatabaseAdminWriteCommandService
    original = service.command_insert

    async def command_insert(self, spec, *, session=None):
        documents = spec.get("documents")
        if (
            not isinstance(documents, list)
            or len(documents) < 2
            or not all(isinstance(d, dict) and "_id" in d for d in documents)
            or spec.get("bypassDocumentValidation", False) not in (False, 0)
            or not isinstance(spec.get("ordered", True), bool)
        ):
            return await original(self, spec, session=session)
        collection_name = self._admin._require_collection_name(spec.get("insert"), "insert")
        documents = self._admin._normalize_insert_documents(documents)
        ordered = self._admin._normalize_ordered_from_command(spec.get("ordered"))
        acknowledged = wc.write_command_acknowledged(spec, dialect=self._admin._mongodb_dialect.key)
        collection = self._admin._database.get_collection(collection_name)
        write_errors = None
        try:
            result = await collection.insert_many(documents, ordered=ordered, session=session)
            count = len(result.inserted_ids)
        except BulkWriteError as error:
            details = dict(error.details or {})
            count = int(details.get("nInserted", 0))
            write_errors = []
            for entry in details.get("writeErrors", []):
                entry = dict(entry)
                entry.pop("op", None)
                index = entry.pop("index")
                errmsg = entry.pop("errmsg")
                code = entry.pop("code", None)
                write_errors.append(wc.WriteErrorEntry(index=index, errmsg=errmsg, code=code, details=entry or None))
        return wc._write_command_result(
            wc.WriteCommandResult(count=count, write_errors=write_errors or None), acknowledged=acknowledged
        )

    service.command_insert = command_insert


def _apply_insert_scan_shim() -> None:
    """Shim 4: every single-document insert of the SQLite engine decodes the
    whole collection (``scan_payload_id=True``) to find an equal ``_id`` stored
    under another storage key: inserts are O(n) each, restores O(n^2).

    For ObjectId and string ``_id`` values the only possible other storage keys
    are the two ObjectId classes (bson's and mongoeco's), so an indexed lookup
    of those keys is equivalent to the scan.  Other ``_id`` types keep the scan.
    """
    from bson.objectid import ObjectId as BsonObjectId
    from mongoeco._types._bson_objectid import ObjectId as EcoObjectId
    from mongoeco.engines.sqlite import SQLiteEngine

    original = SQLiteEngine._validate_document_against_unique_indexes

    def _validate(self, db_name, coll_name, document, *, exclude_storage_key=None,
                  skip_id_check=False, scan_payload_id=False):
        if scan_payload_id and not skip_id_check and "_id" in document:
            doc_id = document["_id"]
            if type(doc_id) is str:
                scan_payload_id = False
            elif type(doc_id) in (BsonObjectId, EcoObjectId):
                raw = doc_id.binary
                keys = {self._storage_key(BsonObjectId(raw)), self._storage_key(EcoObjectId(raw))}
                keys.discard(self._storage_key(doc_id))  # checked by the original
                keys.discard(exclude_storage_key)
                conn = self._require_connection()
                for key in keys:
                    row = conn.execute(
                        "SELECT 1 FROM documents WHERE db_name = ? AND coll_name = ? AND storage_key = ? LIMIT 1",
                        (db_name, coll_name, key),
                    ).fetchone()
                    if row is not None:
                        raise self._unique_key_error(
                            f"Duplicate key: _id={doc_id}", f"{db_name}.{coll_name}", document
                        )
                scan_payload_id = False
        return original(self, db_name, coll_name, document, exclude_storage_key=exclude_storage_key,
                        skip_id_check=skip_id_check, scan_payload_id=scan_payload_id)

    SQLiteEngine._validate_document_against_unique_indexes = _validate


class RequestGate:
    """Counts requests in flight so that shutdown can let them finish: a
    cancelled handler does not stop mongoeco's SQLite worker thread, and
    disconnecting under it fails with "database is locked"."""

    def __init__(self) -> None:
        self.inflight = 0
        self.closing = False
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> bool:
        if self.closing:
            return False
        self.inflight += 1
        self.idle.clear()
        return True

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


SHUTDOWN_REPLY = {
    "ok": 0.0,
    "errmsg": "The server is in quiesce mode and will shut down",
    "code": 91,
    "codeName": "ShutdownInProgress",
}


def install_executor_hooks(proxy: Any, admin: StandinAdmin, server: ServerVersion) -> RequestGate:
    """Wrap the proxy's WireCommandExecutor (instance attributes only).

    * shim 1: lowercase ``buildinfo`` (answered by StandinAdmin anyway);
    * shim 2: ``renameCollection`` sent to ``admin`` is run in the source DB
      when source and target share a database;
    * StandinAdmin commands bypass mongoeco entirely;
    * version fields of hello/isMaster/serverStatus are rewritten;
    * requests are counted (RequestGate) for a draining shutdown.
    """
    gate = RequestGate()
    executor = proxy._executor
    original_build = executor._build_request_context
    original_execute = executor.execute_prepared

    def build_request_context(body, *, connection, db_name=None, on_normalized=None):
        name = _command_name(body)
        effective_db = db_name if db_name is not None else (body.get("$db") if isinstance(body, dict) else None)
        if name in StandinAdmin.COMMANDS and isinstance(effective_db, str) and effective_db:
            if on_normalized is not None:
                on_normalized(name, body)
            command_document = {k: v for k, v in body.items() if k not in _WIRE_INTERNAL_KEYS}
            return StandinRequest(effective_db, name, command_document, body)
        if name == "renameCollection" and effective_db == "admin":
            source, target = body.get("renameCollection"), body.get("to")
            if isinstance(source, str) and isinstance(target, str) and "." in source and "." in target:
                source_db = source.split(".", 1)[0]
                if source_db == target.split(".", 1)[0]:
                    body = dict(body)
                    body["$db"] = source_db
                    if db_name is not None:
                        db_name = source_db
        return original_build(body, connection=connection, db_name=db_name, on_normalized=on_normalized)

    async def execute_prepared(context):
        if isinstance(context, StandinRequest):
            return admin.handle(context.command_name, context.db_name, context.command_document)
        if not gate.enter():
            return dict(SHUTDOWN_REPLY)
        try:
            result = await original_execute(context)
        finally:
            gate.leave()
        name = getattr(context, "command_name", None)
        if isinstance(result, dict) and result.get("ok"):
            if name in ("hello", "isMaster", "ismaster"):
                if "version" in result:
                    result["version"] = server.version
                    result["versionArray"] = server.version_array
                    result["gitVersion"] = "0000000000000000000000000000000000000000"
                if "maxWireVersion" in result:
                    result["maxWireVersion"] = server.max_wire_version
            elif name == "serverStatus":
                result["version"] = server.version
                result["process"] = "mongod"
        return result

    executor._build_request_context = build_request_context
    executor.execute_prepared = execute_prepared
    return gate


# --------------------------------------------------------------------------
# process
# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="mongod (mongo-standin)",
        description="MongoDB-wire stand-in (mongoeco) for the mongo:4.4/5.0 images. Test bed only.",
    )
    parser.add_argument("--dbpath", default="/data/db")
    parser.add_argument("--bind_ip", default="0.0.0.0", help="comma-separated list (default 0.0.0.0)")
    parser.add_argument("--bind_ip_all", action="store_true", help="same as --bind_ip 0.0.0.0")
    parser.add_argument("--port", type=int, default=27017)
    args, unknown = parser.parse_known_args(argv)
    if args.bind_ip_all:
        args.bind_ip = "0.0.0.0"
    return args, unknown


class DbpathLock:
    def __init__(self, dbpath: str) -> None:
        self.path = os.path.join(dbpath, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(
                    f"Unable to lock the lock file: {self.path} (Resource temporarily unavailable). "
                    f"Another mongod instance is already running on the {os.path.dirname(self.path)} directory"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            # mongod leaves an empty mongod.lock after a clean shutdown.
            os.ftruncate(self.fd, 0)
            os.fsync(self.fd)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def fatal(log_id: int, msg: str, error: str, code: int) -> int:
    log("F", "CONTROL", log_id, msg, error=error)
    print(f"mongo-standin: {msg}: {error}", file=sys.stderr, flush=True)
    return code


async def serve(args: argparse.Namespace, server: ServerVersion, admin: StandinAdmin) -> int:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    hosts = [h.strip() for h in args.bind_ip.split(",") if h.strip()]
    engine = SQLiteEngine(os.path.join(args.dbpath, SQLITE_FILE))
    proxy = AsyncMongoEcoProxyServer(engine=engine, host=hosts if len(hosts) > 1 else hosts[0], port=args.port)
    gate = install_executor_hooks(proxy, admin, server)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(signame: str) -> None:
        if received:
            log("I", "CONTROL", 23377, "Received signal during shutdown, ignored", signal=signame)
            return
        received.append(signame)
        log("I", "CONTROL", 23377, "Received signal", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    try:
        address = await proxy.start()
    except OSError as err:
        return fatal(20568, "Error setting up listener", str(err), 48)
    port = address.port
    log("I", "NETWORK", 23015, "Listening on", address=",".join(hosts), port=port)
    log("I", "NETWORK", 23016, "Waiting for connections", port=port, ssl="off")
    uri_host = "127.0.0.1" if hosts[0] in ("0.0.0.0", "::") else hosts[0]
    print(f"READY mongodb://{uri_host}:{port}/", flush=True)

    await stop.wait()
    started = time.monotonic()
    log("I", "CONTROL", 4784900, "Stepping down the ReplicationCoordinator for shutdown")
    # 1. no new connections, no new requests; 2. let running requests finish
    # (their SQLite transactions commit); 3. close connections and the engine.
    gate.closing = True
    listener = getattr(proxy, "_server", None)
    if listener is not None:
        listener.close()
    if gate.inflight:
        log("I", "COMMAND", 4695400, "Waiting for in-flight requests", count=gate.inflight)
        try:
            await asyncio.wait_for(gate.idle.wait(), SHUTDOWN_DRAIN_SECONDS)
        except TimeoutError:
            log("W", "COMMAND", 4695401, "In-flight requests still running at shutdown", count=gate.inflight)
    code = 0
    for attempt in range(1, 6):
        try:
            await proxy.close()
            break
        except Exception as err:  # ExceptionGroup from the proxy cleanup
            log("W", "STORAGE", 22347, "Shutdown step failed, retrying", attempt=attempt, error=repr(err))
            await asyncio.sleep(0.5)
    else:
        code = 1
    log("I", "CONTROL", 20565, "Now exiting", durationMillis=int((time.monotonic() - started) * 1000))
    return code


def main(argv: list[str] | None = None) -> int:
    args, unknown = parse_args(sys.argv[1:] if argv is None else argv)
    if unknown:
        log("W", "CONTROL", 1, "Ignoring unsupported mongod options (stand-in)", options=unknown)

    try:
        server = ServerVersion.parse(
            os.environ.get("MONGO_VERSION") or DEFAULT_MONGO_VERSION,
            os.environ.get("STANDIN_MAX_WIRE_VERSION"),
        )
    except ValueError as err:
        return fatal(20574, "Error during global initialization", str(err), EXIT_BADOPTIONS)

    log("I", "CONTROL", 4615611, "MongoDB starting (mongo-standin)", pid=os.getpid(), port=args.port,
        dbPath=args.dbpath, host=socket.gethostname())
    log("I", "CONTROL", 23403, "Build Info", buildInfo={"version": server.version, "standin": "mongoeco " + MONGOECO_PIN})

    if not os.path.isdir(args.dbpath):
        return fatal(
            20557, "DBException in initAndListen, terminating",
            f"NonExistentPath: Data directory {args.dbpath} not found. Create the missing directory or "
            "specify another path using (1) the --dbpath command line option, or (2) by adding the "
            "'storage.dbPath' option in the configuration file.",
            EXIT_DBPATH,
        )
    lock = DbpathLock(args.dbpath)
    try:
        lock.acquire()
    except (RuntimeError, OSError) as err:
        return fatal(20557, "DBException in initAndListen, terminating", f"DBPathInUse: {err}", EXIT_DBPATH)

    try:
        fcv_store = FcvStore(args.dbpath)
        try:
            fcv = fcv_store.load()
        except (ValueError, OSError) as err:
            return fatal(20573, "Wrong mongod version", f"UPGRADE PROBLEM: unreadable featureCompatibilityVersion document: {err}", EXIT_NEED_UPGRADE)
        if fcv is None:
            # Fresh dbpath: the server's own FCV.  STANDIN_INITIAL_FCV lets a
            # test bed model data written by an older mongod (e.g. "4.2").
            fcv = os.environ.get("STANDIN_INITIAL_FCV") or server.line
            fcv_store.save(fcv)
            log("I", "STORAGE", 20459, "Setting featureCompatibilityVersion", newVersion=fcv)
        problem = startup_fcv_error(server, fcv)
        if problem:
            return fatal(20573, "Wrong mongod version", problem, EXIT_NEED_UPGRADE)

        # mongoeco is imported only now (~1 s): refusals above stay fast
        try:
            import mongoeco
        except ImportError as err:
            return fatal(20574, "Error during global initialization", f"mongoeco not importable: {err}", 1)
        if mongoeco.__version__ != MONGOECO_PIN and os.environ.get("STANDIN_ALLOW_UNTESTED_MONGOECO") != "1":
            return fatal(
                20574, "Error during global initialization",
                f"mongoeco {mongoeco.__version__} found, shims are written for {MONGOECO_PIN}", 1,
            )
        apply_module_shims()
        admin = StandinAdmin(server, fcv_store, fcv)
        return asyncio.run(serve(args, server, admin))
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
