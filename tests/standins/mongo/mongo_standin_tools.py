#!/usr/bin/env python3
"""mongodump / mongorestore stand-ins (pymongo only; test bed, not MongoDB's tools).

Implements the subset of the MongoDB Database Tools 100.x command lines that the
mender-upgrade flows use, with the real *archive* format of mongo-tools
(common/archive: magic 0x8199e26d little-endian, header document, one
collection-metadata document per collection, terminator, then namespace
segments and EOF blocks carrying the CRC-64/ECMA of the collection's
documents) and the real *directory* format (<db>/<coll>.bson +
<coll>.metadata.json, optionally .gz).

Documents are copied as raw BSON (RawBSONDocument), never decoded.  Memory is
bounded: one cursor batch when dumping, one insert batch (<=1000 docs or
<=16 MiB) per namespace when restoring.

An archive is complete only if every namespace of its prelude got its EOF block
(the rule of the real mongorestore).  On any failure mongodump stops writing at
once: no further EOF block, and with --gzip no gzip trailer, so a truncated
stream never looks complete.  Exit codes as mongo-tools: 0 ok, 1 failure,
3 bad options.

Run as ``mongodump ...`` / ``mongorestore ...`` (thin wrapper scripts) or
``python3 mongo_standin_tools.py {mongodump|mongorestore} ...``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import os
import re
import socket
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import bson
import pymongo
from bson import json_util
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from pymongo.errors import BulkWriteError, PyMongoError

TOOL_VERSION = "100.9.4-standin"
ARCHIVE_FORMAT_VERSION = "0.1"
MAGIC = 0x8199E26D
MAGIC_BYTES = struct.pack("<I", MAGIC)
TERMINATOR = b"\xff\xff\xff\xff"
MAX_BSON_SIZE = 16 * 1024 * 1024
MIN_BSON_SIZE = 5
SKIP_DATABASES = ("admin", "local", "config")
INSERT_BATCH_DOCS = 1000
INSERT_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT_MS = int(os.environ.get("MONGO_STANDIN_TOOLS_TIMEOUT_MS", "10000"))
REFUSED_RETRY_SECONDS = 2.0

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_OPTIONS = 3

RAW = CodecOptions(document_class=RawBSONDocument)
CANONICAL = json_util.JSONOptions(json_mode=json_util.JSONMode.CANONICAL)


class ToolError(Exception):
    """A failure reported as ``Failed: <message>`` with exit code 1."""


class BadOptions(Exception):
    """A command-line error (exit code 3)."""


# --------------------------------------------------------------------------
# CRC-64/ECMA as Go's hash/crc64 with crc64.ECMA (CRC-64/XZ)
# --------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_POLY = 0xC96C5795D7870F42
_TABLE: list[int] = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)
del _i, _c

# Vectorised path: a block of _LANES * _LANE_LEN bytes is cut into _LANES
# chunks whose CRC registers are computed side by side with numpy, then folded
# together with the linear "advance by _LANE_LEN zero bytes" operator.
_LANES, _LANE_LEN = 4096, 256
_BLOCK = _LANES * _LANE_LEN
_np_state: dict[str, Any] = {}


def _crc_py(reg: int, data) -> int:
    table = _TABLE
    for byte in data:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


def _crc_np_setup() -> bool:
    if "ok" in _np_state:
        return _np_state["ok"]
    try:
        import numpy as np
    except ImportError:
        _np_state["ok"] = False
        return False

    def advance(value: int, count: int) -> int:
        for _ in range(count):
            value = _TABLE[value & 0xFF] ^ (value >> 8)
        return value

    basis = [advance(1 << bit, _LANE_LEN) for bit in range(64)]
    shift_tables = []
    for k in range(8):
        tab = [0] * 256
        for b in range(1, 256):
            low = b & -b
            tab[b] = tab[b ^ low] ^ basis[8 * k + low.bit_length() - 1]
        shift_tables.append(tab)
    _np_state.update(ok=True, np=np, table=np.array(_TABLE, dtype=np.uint64), shift=shift_tables)
    return True


def _crc_np_block(reg: int, block) -> int:
    np = _np_state["np"]
    table = _np_state["table"]
    z0, z1, z2, z3, z4, z5, z6, z7 = _np_state["shift"]
    columns = np.frombuffer(block, dtype=np.uint8).reshape(_LANES, _LANE_LEN).T.copy()
    lanes = np.zeros(_LANES, dtype=np.uint64)
    eight = np.uint64(8)
    for j in range(_LANE_LEN):
        lanes = table[lanes.astype(np.uint8) ^ columns[j]] ^ (lanes >> eight)
    for g in lanes.tolist():
        reg = (
            z0[reg & 255] ^ z1[(reg >> 8) & 255] ^ z2[(reg >> 16) & 255] ^ z3[(reg >> 24) & 255]
            ^ z4[(reg >> 32) & 255] ^ z5[(reg >> 40) & 255] ^ z6[(reg >> 48) & 255] ^ z7[reg >> 56]
        ) ^ g
    return reg


class Crc64:
    """Incremental CRC-64/ECMA; ``signed()`` is Go's ``int64(hash.Sum64())``."""

    def __init__(self) -> None:
        self._reg = _MASK64
        self._pending = bytearray()

    def update(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= _BLOCK:
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        view = memoryview(self._pending)
        done = 0
        if len(view) >= _BLOCK and _crc_np_setup():
            while len(view) - done >= _BLOCK:
                self._reg = _crc_np_block(self._reg, view[done:done + _BLOCK])
                done += _BLOCK
        if final or done == 0:
            self._reg = _crc_py(self._reg, view[done:])
            done = len(view)
        view.release()
        del self._pending[:done]

    def unsigned(self) -> int:
        self._drain(final=True)
        return self._reg ^ _MASK64

    def signed(self) -> int:
        value = self.unsigned()
        return value - (1 << 64) if value >= 1 << 63 else value


# --------------------------------------------------------------------------
# logging, options, connection
# --------------------------------------------------------------------------


class Logger:
    def __init__(self, quiet: bool = False, verbosity: int = 0) -> None:
        self.quiet = quiet
        self.verbosity = verbosity

    def __call__(self, message: str, level: int = 0) -> None:
        if self.quiet or level > self.verbosity:
            return
        self.always(message)

    @staticmethod
    def always(message: str) -> None:
        now = datetime.datetime.now().astimezone()
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}" + now.strftime("%z")
        sys.stderr.write(f"{stamp}\t{message}\n")
        sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise BadOptions(message)


def _base_parser(tool: str) -> _Parser:
    p = _Parser(prog=tool, add_help=False, allow_abbrev=False,
                description=f"{tool} stand-in (mongo-standin; pymongo based)")
    p.add_argument("--help", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("-h", "--host")
    p.add_argument("--port")
    p.add_argument("--uri")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--authenticationDatabase")
    p.add_argument("--authenticationMechanism")
    p.add_argument("-d", "--db")
    p.add_argument("-c", "--collection")
    p.add_argument("--archive")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("-j", "--numParallelCollections", type=int)
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    # go-flags optional value: a bare --archive never consumes the next token.
    return ["--archive=-" if a == "--archive" else a for a in argv]


def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(_normalise_argv(argv))
    if args.help:
        parser.print_help(sys.stdout)
        raise SystemExit(0)
    return args


def connect(args: argparse.Namespace, positional_uri: str | None) -> pymongo.MongoClient:
    uri = args.uri or positional_uri
    if args.uri and positional_uri and args.uri != positional_uri:
        raise BadOptions("illegal argument combination: cannot specify a URI in a positional argument and --uri")
    kwargs: dict[str, Any] = {"document_class": dict, "appname": f"{TOOL_VERSION}"}
    if uri:
        if args.host:
            raise BadOptions("illegal argument combination: cannot specify --host and --uri")
        if args.port:
            raise BadOptions("illegal argument combination: cannot specify --port and --uri")
        try:
            parsed = pymongo.uri_parser.parse_uri(uri)
        except Exception as err:  # InvalidURI, ConfigurationError, ...
            raise BadOptions(f"error parsing uri: {err}") from None
        opts = {k.lower() for k in parsed.get("options", {})}
        if "serverselectiontimeoutms" not in opts:
            kwargs["serverSelectionTimeoutMS"] = DEFAULT_TIMEOUT_MS
        if "connecttimeoutms" not in opts:
            kwargs["connectTimeoutMS"] = DEFAULT_TIMEOUT_MS
        if len(parsed["nodelist"]) == 1 and "replicaset" not in opts and "directconnection" not in opts \
                and not uri.startswith("mongodb+srv://"):
            kwargs["directConnection"] = True
        target = uri
    else:
        host = args.host or "localhost"
        set_name = None
        if "/" in host:
            set_name, host = host.split("/", 1)
        hosts = []
        for item in host.split(","):
            item = item.strip()
            if not item:
                continue
            if ":" not in item.rsplit("]", 1)[-1]:
                item = f"{item}:{args.port or 27017}"
            elif args.port:
                raise BadOptions("illegal argument combination: cannot specify a port in --host and --port")
            hosts.append(item)
        if not hosts:
            raise BadOptions(f"invalid --host {args.host!r}")
        target = "mongodb://" + ",".join(hosts) + "/"
        kwargs.update(serverSelectionTimeoutMS=DEFAULT_TIMEOUT_MS, connectTimeoutMS=DEFAULT_TIMEOUT_MS)
        if set_name:
            kwargs["replicaSet"] = set_name
        elif len(hosts) == 1:
            kwargs["directConnection"] = True
    if args.username is not None:
        kwargs["username"] = args.username
        if args.password is None:
            raise BadOptions("password required with --username (interactive prompt not supported by the stand-in)")
        kwargs["password"] = args.password
    if args.authenticationDatabase:
        kwargs["authSource"] = args.authenticationDatabase
    if args.authenticationMechanism:
        kwargs["authMechanism"] = args.authenticationMechanism
    if not target.startswith("mongodb+srv://"):
        nodes = pymongo.uri_parser.parse_uri(target)["nodelist"]
        if len(nodes) == 1:
            _probe_tcp(*nodes[0])
    try:
        client = pymongo.MongoClient(target, **kwargs)
        client.admin.command("ping")
    except PyMongoError as err:
        raise ToolError(f"can't create session: could not connect to server: {err}") from None
    return client


def _probe_tcp(host: str, port: int, window: float = REFUSED_RETRY_SECONDS) -> None:
    """Fail fast when nothing listens (pymongo would wait for the whole
    server selection timeout); retry refused connects for a short window so a
    server that is just starting up is still found."""
    deadline = time.monotonic() + window
    while True:
        try:
            with socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT_MS / 1000):
                return
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise ToolError(f"can't create session: could not connect to server: "
                                f"connection refused ({host}:{port})") from None
            time.sleep(0.2)
        except OSError as err:
            raise ToolError(f"can't create session: could not connect to server: {host}:{port}: {err}") from None


def server_version(client: pymongo.MongoClient) -> str:
    try:
        return str(client.admin.command("buildInfo").get("version", ""))
    except PyMongoError:
        return ""


# --------------------------------------------------------------------------
# namespace patterns (mongorestore --nsInclude/--nsExclude/--nsFrom/--nsTo)
# --------------------------------------------------------------------------


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "*" else re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def _validate_ns_pattern(pattern: str) -> None:
    if "." not in pattern.replace("\\.", ""):
        raise BadOptions(f"invalid namespace pattern {pattern!r}: must contain a '.' separating database and collection")


class NsRenamer:
    """--nsFrom/--nsTo with mongorestore's ``$variable$`` syntax."""

    def __init__(self, sources: list[str], targets: list[str]) -> None:
        if len(sources) != len(targets):
            raise BadOptions("Different number of nsFrom and nsTo arguments")
        self.rules = []
        for src, dst in zip(sources, targets):
            parts = src.split("$")
            if len(parts) % 2 == 0:
                raise BadOptions(f"unmatched '$' in --nsFrom {src!r}")
            regex, names = [], []
            for i, part in enumerate(parts):
                if i % 2:
                    names.append(part)
                    regex.append(f"(?P<v{len(names) - 1}>.*?)")
                else:
                    regex.append(re.escape(part))
            self.rules.append((re.compile("^" + "".join(regex) + "$", re.DOTALL), names, dst))

    def __call__(self, ns: str) -> str:
        for regex, names, dst in self.rules:
            m = regex.match(ns)
            if m:
                out = dst
                for i, name in enumerate(names):
                    out = out.replace(f"${name}$", m.group(f"v{i}"))
                return out
        return ns


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------


def normalise_index(spec: dict) -> SON:
    """listIndexes entry -> what mongod 4.4+ reports (mongoeco quirks removed)."""
    spec = dict(spec)
    spec.pop("ns", None)
    out = SON()
    out["v"] = spec.pop("v", 2)
    out["key"] = spec.pop("key")
    out["name"] = spec.pop("name")
    if out["name"] == "_id_":
        spec.pop("unique", None)
    if spec.get("unique") is False:
        spec.pop("unique")
    if spec.get("sparse") is False:
        spec.pop("sparse")
    for k, v in spec.items():
        out[k] = v
    return out


def metadata_json(options: dict, indexes: list, uuid: str | None, name: str, coll_type: str) -> str:
    meta = SON()
    if options:
        meta["options"] = options
    meta["indexes"] = indexes
    if uuid:
        meta["uuid"] = uuid
    meta["collectionName"] = name
    meta["type"] = coll_type
    return json_util.dumps(meta, json_options=CANONICAL, separators=(",", ":"), ensure_ascii=False)


def parse_metadata(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not text.strip():
        return {}
    return json_util.loads(text, json_options=CANONICAL)


# --------------------------------------------------------------------------
# output sink (raw or gzip) that never finalises on failure
# --------------------------------------------------------------------------


class Sink:
    """Writes straight to a file descriptor with os.write() loops: a partial
    write to a pipe whose reader went away must surface as an error (a
    BufferedWriter was seen to swallow it)."""

    def __init__(self, fd: int, gzip_enabled: bool) -> None:
        self._fd = fd
        self._z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip_enabled else None
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        if self._z is not None:
            data = self._z.compress(data)
        if data:
            self._buf += data
            if len(self._buf) >= 1 << 20:
                self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buf)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        finally:
            view.release()
        self._buf.clear()

    def finish(self) -> None:
        if self._z is not None:
            self._buf += self._z.flush(zlib.Z_FINISH)
        self._flush()


# --------------------------------------------------------------------------
# mongodump
# --------------------------------------------------------------------------


@dataclass
class DumpIntent:
    db: str
    coll: str
    options: dict
    uuid: str | None
    coll_type: str = "collection"
    metadata: str = ""

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.coll}"


def dump_parser() -> _Parser:
    p = _base_parser("mongodump")
    p.add_argument("-o", "--out")
    p.add_argument("-q", "--query")
    p.add_argument("--readPreference")
    p.add_argument("--forceTableScan", action="store_true")
    p.add_argument("--excludeCollection", action="append", default=[])
    p.add_argument("--excludeCollectionsWithPrefix", action="append", default=[])
    p.add_argument("--oplog", action="store_true")
    p.add_argument("--dumpDbUsersAndRoles", action="store_true")
    p.add_argument("--viewsAsCollections", action="store_true")
    p.add_argument("positional", nargs="*")
    return p


def _collect_dump_intents(client: pymongo.MongoClient, args: argparse.Namespace, log: Logger) -> list[DumpIntent]:
    if args.db:
        databases = [args.db]
    else:
        databases = sorted(d for d in client.list_database_names() if d not in SKIP_DATABASES)
    intents = []
    for db_name in databases:
        infos = sorted(client[db_name].list_collections(), key=lambda i: i["name"])
        for info in infos:
            name = info["name"]
            if args.collection and name != args.collection:
                continue
            if name.startswith("system."):
                continue
            if name in args.excludeCollection or any(name.startswith(p) for p in args.excludeCollectionsWithPrefix):
                continue
            coll_type = info.get("type", "collection")
            if coll_type != "collection":
                log(f"skipping {db_name}.{name}: {coll_type}s are not supported by the stand-in")
                continue
            intents.append(DumpIntent(db_name, name, dict(info.get("options") or {}),
                                      _uuid_hex(info.get("info", {}).get("uuid"))))
    if args.collection and not intents:
        # the real tool dumps nothing and succeeds for a missing collection
        log(f"collection {args.db}.{args.collection} does not exist")
    for intent in intents:
        indexes = [normalise_index(ix) for ix in client[intent.db][intent.coll].list_indexes()]
        intent.metadata = metadata_json(intent.options, indexes, intent.uuid, intent.coll, intent.coll_type)
    return intents


def _uuid_hex(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):  # bson Binary subtype 4 (a bytes subclass)
        return bytes(value).hex()
    return getattr(value, "hex", None) if isinstance(getattr(value, "hex", None), str) else None


def _iter_raw(client: pymongo.MongoClient, intent: DumpIntent, query: dict | None) -> Iterator[bytes]:
    coll = client[intent.db].get_collection(intent.coll, codec_options=RAW)
    with coll.find(query or {}, batch_size=INSERT_BATCH_DOCS) as cursor:
        for doc in cursor:
            yield doc.raw


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def run_dump(argv: list[str]) -> int:
    parser = dump_parser()
    args = _parse(parser, argv)
    if args.version:
        print(f"mongodump version: {TOOL_VERSION}\ngit version: mongo-standin\nGo version: n/a")
        return EXIT_OK
    log = Logger(args.quiet, args.verbose)
    positional_uri = None
    for item in args.positional:
        if item.startswith(("mongodb://", "mongodb+srv://")) and positional_uri is None:
            positional_uri = item
        else:
            raise BadOptions(f"positional arguments not allowed: {args.positional}")
    if args.collection and not args.db:
        raise BadOptions("cannot dump a collection without a specified database")
    if args.archive is not None and args.out:
        raise BadOptions("--out not allowed when --archive is specified")
    if args.oplog:
        raise ToolError("--oplog mode only supported on nodes that are part of a replica set (stand-in)")
    if args.dumpDbUsersAndRoles:
        raise BadOptions("--dumpDbUsersAndRoles is not supported by the stand-in")
    if args.out == "-":
        raise BadOptions("--out - (BSON to stdout) is not supported by the stand-in")
    query = None
    if args.query:
        if not args.collection:
            raise BadOptions("cannot dump using a query without a specified collection")
        query = json_util.loads(args.query)

    client = connect(args, positional_uri)
    try:
        intents = _collect_dump_intents(client, args, log)
        if args.archive is not None:
            return _dump_archive(client, args, intents, query, log)
        return _dump_directory(client, args, intents, query, log)
    except PyMongoError as err:
        raise ToolError(str(err)) from None
    finally:
        client.close()


def _dump_archive(client, args, intents: list[DumpIntent], query, log: Logger) -> int:
    to_stdout = args.archive == "-"
    if to_stdout:
        if sys.stdout.isatty():
            raise BadOptions("--archive without a file name writes binary data to stdout: redirect or pipe it")
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        location = "archive on stdout"
    else:
        fd = os.open(args.archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        location = f"archive '{args.archive}'"
    sink = Sink(fd, args.gzip)
    try:
        sink.write(MAGIC_BYTES)
        sink.write(bson.encode(SON([
            ("concurrent_collections", 1),
            ("version", ARCHIVE_FORMAT_VERSION),
            ("server_version", server_version(client)),
            ("tool_version", TOOL_VERSION),
        ])))
        for intent in intents:
            log(f"writing {intent.ns} metadata to {location}", level=1)
            sink.write(bson.encode(SON([
                ("db", intent.db), ("collection", intent.coll), ("metadata", intent.metadata),
                ("size", 0), ("type", intent.coll_type),
            ])))
        sink.write(TERMINATOR)
        for intent in intents:
            log(f"writing {intent.ns} to {location}")
            crc = Crc64()
            count = 0
            sink.write(bson.encode(SON([("db", intent.db), ("collection", intent.coll),
                                        ("EOF", False), ("CRC", Int64(0))])))
            for raw in _iter_raw(client, intent, query):
                sink.write(raw)
                crc.update(raw)
                count += 1
            sink.write(TERMINATOR)
            sink.write(bson.encode(SON([("db", intent.db), ("collection", intent.coll),
                                        ("EOF", True), ("CRC", Int64(crc.signed()))])))
            sink.write(TERMINATOR)
            log(f"done dumping {intent.ns} ({_plural(count, 'document')})")
        sink.finish()
    except BrokenPipeError:
        raise ToolError(f"error writing data to {location}: broken pipe") from None
    except OSError as err:
        raise ToolError(f"error writing data to {location}: {err}") from None
    finally:
        if not to_stdout:
            os.close(fd)
    return EXIT_OK


def _dump_directory(client, args, intents: list[DumpIntent], query, log: Logger) -> int:
    root = args.out or "dump"
    ext = ".gz" if args.gzip else ""
    for intent in intents:
        db_dir = os.path.join(root, intent.db)
        os.makedirs(db_dir, exist_ok=True)
        base = os.path.join(db_dir, _escape_collection(intent.coll))
        with _open_out(base + ".metadata.json" + ext, args.gzip) as fh:
            fh.write(intent.metadata.encode("utf-8"))
        path = base + ".bson" + ext
        log(f"writing {intent.ns} to {path}")
        count = 0
        with _open_out(path, args.gzip) as fh:
            for raw in _iter_raw(client, intent, query):
                fh.write(raw)
                count += 1
        log(f"done dumping {intent.ns} ({_plural(count, 'document')})")
    return EXIT_OK


def _escape_collection(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")


def _unescape_collection(name: str) -> str:
    return name.replace("%2F", "/").replace("%5C", "\\").replace("%25", "%")


def _open_out(path: str, gz: bool) -> BinaryIO:
    if gz:
        return gzip.open(path, "wb")  # type: ignore[return-value]
    return open(path, "wb")  # noqa: SIM115


# --------------------------------------------------------------------------
# mongorestore
# --------------------------------------------------------------------------


def restore_parser() -> _Parser:
    p = _base_parser("mongorestore")
    p.add_argument("--dir")
    p.add_argument("--drop", action="store_true")
    p.add_argument("--nsInclude", action="append", default=[])
    p.add_argument("--nsExclude", action="append", default=[])
    p.add_argument("--nsFrom", action="append", default=[])
    p.add_argument("--nsTo", action="append", default=[])
    p.add_argument("--noIndexRestore", action="store_true")
    p.add_argument("--stopOnError", action="store_true")
    p.add_argument("--dryRun", action="store_true")
    p.add_argument("--maintainInsertionOrder", action="store_true")
    p.add_argument("--bypassDocumentValidation", action="store_true")
    p.add_argument("--objcheck", action="store_true")
    p.add_argument("--preserveUUID", action="store_true")
    p.add_argument("--convertLegacyIndexes", action="store_true")
    p.add_argument("--keepIndexVersion", action="store_true")
    p.add_argument("--numInsertionWorkersPerCollection", type=int)
    p.add_argument("--writeConcern")
    p.add_argument("positional", nargs="*")
    return p


@dataclass
class NsState:
    source_ns: str
    target_db: str
    target_coll: str
    metadata: dict
    included: bool
    crc: Crc64 | None = None
    prepared: bool = False
    finished: bool = False
    batch: list = field(default_factory=list)
    batch_bytes: int = 0
    restored: int = 0
    failed: int = 0
    errors_logged: int = 0

    @property
    def target_ns(self) -> str:
        return f"{self.target_db}.{self.target_coll}"


class Restorer:
    def __init__(self, client: pymongo.MongoClient, args: argparse.Namespace, log: Logger, source: str) -> None:
        self.client = client
        self.args = args
        self.log = log
        self.source = source
        self.states: dict[str, NsState] = {}
        includes = list(args.nsInclude)
        if args.db:
            log("The --db and --collection flags are deprecated for this use-case; please use --nsInclude instead, "
                "i.e. with --nsInclude=${DATABASE}.${COLLECTION}")
            includes.append(f"{_escape_pattern(args.db)}.{_escape_pattern(args.collection) if args.collection else '*'}")
        for pattern in includes + list(args.nsExclude):
            _validate_ns_pattern(pattern)
        self.include = [_wildcard_regex(p) for p in includes] or [_wildcard_regex("*")]
        self.exclude = [_wildcard_regex(p) for p in args.nsExclude]
        self.rename = NsRenamer(args.nsFrom, args.nsTo)

    def register(self, db: str, coll: str, metadata: dict) -> NsState:
        ns = f"{db}.{coll}"
        included = (
            db not in ("local", "config")
            and not coll.startswith("system.")
            and any(r.match(ns) for r in self.include)
            and not any(r.match(ns) for r in self.exclude)
        )
        target = self.rename(ns)
        tdb, _, tcoll = target.partition(".")
        state = NsState(ns, tdb, tcoll, metadata, included, crc=Crc64() if included else None)
        self.states[ns] = state
        return state

    def _collection(self, state: NsState):
        return self.client[state.target_db].get_collection(state.target_coll, codec_options=RAW)

    def prepare(self, state: NsState) -> None:
        if state.prepared or not state.included:
            return
        state.prepared = True
        db = self.client[state.target_db]
        if self.args.dryRun:
            return
        if self.args.drop:
            self.log(f"dropping collection {state.target_ns} before restoring")
            db.drop_collection(state.target_coll)
        if state.target_coll not in db.list_collection_names(filter={"name": state.target_coll}):
            options = dict(state.metadata.get("options") or {})
            options.pop("uuid", None)
            db.command(SON([("create", state.target_coll)] + list(options.items())))
        self.log(f"restoring {state.target_ns} from {self.source}")

    def add(self, state: NsState, raw: bytes) -> None:
        if state.crc is not None:
            state.crc.update(raw)
        if not state.included:
            return
        state.batch.append(RawBSONDocument(raw))
        state.batch_bytes += len(raw)
        if len(state.batch) >= INSERT_BATCH_DOCS or state.batch_bytes >= INSERT_BATCH_BYTES:
            self.flush(state)

    def flush(self, state: NsState) -> None:
        if not state.batch:
            return
        batch, state.batch, state.batch_bytes = state.batch, [], 0
        if self.args.dryRun:
            state.restored += len(batch)
            return
        ordered = self.args.maintainInsertionOrder or self.args.stopOnError
        try:
            # (InsertManyResult.inserted_ids is empty for RawBSONDocument input)
            self._collection(state).insert_many(
                batch, ordered=ordered, bypass_document_validation=self.args.bypassDocumentValidation)
            state.restored += len(batch)
        except BulkWriteError as err:
            inserted = int(err.details.get("nInserted", 0))
            errors = err.details.get("writeErrors", [])
            state.restored += inserted
            state.failed += len(batch) - inserted
            for item in errors:
                if self.args.stopOnError:
                    raise ToolError(f"{state.target_ns}: error restoring from {self.source}: {item.get('errmsg')}") from None
                if state.errors_logged < 10:
                    self.log(f"continuing through error: {item.get('errmsg')}")
                    state.errors_logged += 1

    def finish(self, state: NsState, crc: int | None) -> None:
        if state.finished:
            raise ToolError(f"error demultiplexing archive; namespace header for already closed namespace {state.source_ns}")
        state.finished = True
        if not state.included:
            return
        self.prepare(state)
        self.flush(state)
        if crc is not None and state.crc is not None:
            actual = state.crc.signed()
            if actual != crc:
                raise ToolError(f"CRC mismatch for namespace {state.source_ns}, {actual}!={crc}")
        self.log(f"finished restoring {state.target_ns} ({_plural(state.restored, 'document')}, "
                 f"{_plural(state.failed, 'failure')})")

    def restore_indexes(self) -> None:
        if self.args.noIndexRestore or self.args.dryRun:
            return
        for state in self.states.values():
            if not state.included:
                continue
            specs = []
            for ix in state.metadata.get("indexes") or []:
                spec = SON(ix)
                if spec.get("name") == "_id_":
                    continue
                spec.pop("ns", None)
                if not self.args.keepIndexVersion:
                    spec.pop("v", None)
                specs.append(spec)
            if not specs:
                self.log(f"no indexes to restore for collection {state.target_ns}", level=1)
                continue
            self.log(f"restoring indexes for collection {state.target_ns} from metadata")
            try:
                self.client[state.target_db].command(SON([("createIndexes", state.target_coll), ("indexes", specs)]))
            except PyMongoError as err:
                raise ToolError(f"{state.target_ns}: error creating indexes for {state.target_ns}: "
                                f"createIndex error: {err}") from None

    def totals(self) -> tuple[int, int]:
        return (sum(s.restored for s in self.states.values()), sum(s.failed for s in self.states.values()))


def _escape_pattern(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*")


class _Reader:
    """Exact reads from a (possibly gzip) stream; distinguishes clean EOF."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def read_exact(self, n: int, what: str, allow_eof: bool = False) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            try:
                chunk = self.stream.read(n - got)
            except (EOFError, zlib.error, gzip.BadGzipFile) as err:
                raise ToolError(f"corruption found in archive; I/O error reading {what} ( {err} )") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got == 0 and allow_eof:
            return None
        if got < n:
            raise ToolError(f"corruption found in archive; I/O error reading {what} ( unexpected EOF )")
        return b"".join(chunks)

    def bson_or_terminator(self, what: str, allow_eof: bool = False) -> bytes | None:
        """Returns BSON bytes, TERMINATOR, or None on clean EOF (if allowed)."""
        head = self.read_exact(4, "length or terminator", allow_eof=allow_eof)
        if head is None:
            return None
        if head == TERMINATOR:
            return TERMINATOR
        size = struct.unpack("<i", head)[0]
        if size < MIN_BSON_SIZE or size > MAX_BSON_SIZE:
            raise ToolError(f"corruption found in archive; {size} is neither a valid bson length nor a archive terminator")
        body = self.read_exact(size - 4, what)
        if body[-1] != 0:
            raise ToolError(f"corruption found in archive; bson (size: {size}) doesn't end with a null byte")
        return head + body


def _open_archive_input(args) -> tuple[BinaryIO, str, Any]:
    if args.archive == "-":
        raw: BinaryIO = sys.stdin.buffer
        source = "archive on stdin"
        closer = None
    else:
        raw = open(args.archive, "rb")  # noqa: SIM115
        source = f"archive '{args.archive}'"
        closer = raw
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if args.gzip else raw
    return stream, source, closer


def _restore_archive(restorer_factory, args, log: Logger) -> Restorer:
    stream, source, closer = _open_archive_input(args)
    try:
        reader = _Reader(stream)
        magic = reader.read_exact(4, "beginning of archive", allow_eof=True)
        if magic is None or magic != MAGIC_BYTES:
            raise ToolError("stream or file does not appear to be a mongodump archive")
        header = reader.bson_or_terminator("archive header")
        if header == TERMINATOR:
            raise ToolError("corruption found in archive; consecutive terminators / headerless blocks are not allowed")
        header_doc = bson.decode(header)
        log(f"archive format version \"{header_doc.get('version')}\"", level=1)
        log(f"archive server version \"{header_doc.get('server_version')}\"", level=1)
        log(f"archive tool version \"{header_doc.get('tool_version')}\"", level=1)
        restorer: Restorer = restorer_factory(source)
        log(f"preparing collections to restore from")
        while True:
            item = reader.bson_or_terminator("collection metadata")
            if item == TERMINATOR:
                break
            cm = bson.decode(item)
            if cm.get("type") == "timeseries":
                raise ToolError(f"{cm.get('db')}.{cm.get('collection')}: timeseries collections are not supported by the stand-in")
            state = restorer.register(cm["db"], cm["collection"], parse_metadata(cm.get("metadata", "")))
            if state.included:
                log(f"reading metadata for {state.target_ns} from {source}")
        # body: blocks of (namespace header, documents*, terminator)
        while True:
            head = reader.bson_or_terminator("namespace header", allow_eof=True)
            if head is None:
                break
            if head == TERMINATOR:
                raise ToolError("corruption found in archive; consecutive terminators / headerless blocks are not allowed")
            nsh = bson.decode(head)
            ns = f"{nsh.get('db')}.{nsh.get('collection')}"
            state = restorer.states.get(ns)
            if state is None:
                raise ToolError(f"error demultiplexing archive; namespace {ns} is not in the archive prelude")
            if state.finished:
                raise ToolError(f"error demultiplexing archive; namespace header for already closed namespace {ns}")
            if nsh.get("EOF"):
                item = reader.bson_or_terminator("EOF block")
                if item != TERMINATOR:
                    raise ToolError(f"corruption found in archive; data after EOF header for {ns}")
                restorer.finish(state, int(nsh.get("CRC", 0)))
                continue
            restorer.prepare(state)
            while True:
                item = reader.bson_or_terminator("document")
                if item == TERMINATOR:
                    break
                restorer.add(state, item)
            restorer.flush(state)
        unfinished = [s.source_ns for s in restorer.states.values() if not s.finished]
        if unfinished:
            raise ToolError(f"error demultiplexing archive; archive finished before all collections were seen ({', '.join(unfinished)})")
        return restorer
    finally:
        if closer is not None:
            closer.close()


def _restore_directory(restorer_factory, args, root: str, log: Logger) -> Restorer:
    if not os.path.isdir(root):
        raise ToolError(f"mongorestore target '{root}' invalid: stat {root}: no such file or directory")
    ext = ".gz" if args.gzip else ""
    restorer: Restorer = restorer_factory(root)
    log(f"preparing collections to restore from")
    entries = []
    has_bson = any(n.endswith(".bson" + ext) for n in os.listdir(root))
    db_dirs = [(args.db, root)] if (args.db and has_bson) else [
        (d, os.path.join(root, d)) for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))
    ]
    for db_name, path in db_dirs:
        for fname in sorted(os.listdir(path)):
            if not fname.endswith(".bson" + ext):
                continue
            coll = _unescape_collection(fname[: -len(".bson" + ext)])
            meta_path = os.path.join(path, fname[: -len(".bson" + ext)] + ".metadata.json" + ext)
            metadata = {}
            if os.path.exists(meta_path):
                with (gzip.open(meta_path, "rb") if args.gzip else open(meta_path, "rb")) as fh:
                    metadata = parse_metadata(fh.read())
            state = restorer.register(db_name, coll, metadata)
            entries.append((state, os.path.join(path, fname)))
    for state, path in entries:
        if not state.included:
            state.finished = True
            continue
        log(f"reading metadata for {state.target_ns} from {path}")
        restorer.prepare(state)
        with (gzip.open(path, "rb") if args.gzip else open(path, "rb")) as fh:
            reader = _Reader(fh)  # type: ignore[arg-type]
            while True:
                item = reader.bson_or_terminator("document", allow_eof=True)
                if item is None:
                    break
                if item == TERMINATOR:
                    raise ToolError(f"corruption found in {path}")
                restorer.add(state, item)
        restorer.finish(state, None)
    return restorer


def run_restore(argv: list[str]) -> int:
    parser = restore_parser()
    args = _parse(parser, argv)
    if args.version:
        print(f"mongorestore version: {TOOL_VERSION}\ngit version: mongo-standin\nGo version: n/a")
        return EXIT_OK
    log = Logger(args.quiet, args.verbose)
    positional_uri, target_dir = None, None
    for item in args.positional:
        if item.startswith(("mongodb://", "mongodb+srv://")) and positional_uri is None:
            positional_uri = item
        elif target_dir is None:
            target_dir = item
        else:
            raise BadOptions(f"too many positional arguments: {args.positional}")
    if args.dir and target_dir:
        raise BadOptions("cannot use both --dir and a positional argument to set the target directory")
    target_dir = args.dir or target_dir
    if args.archive is not None and target_dir:
        raise BadOptions("cannot use --archive and a target directory together")
    if args.collection and not args.db:
        raise BadOptions("cannot restore a collection without a specified database")

    client = connect(args, positional_uri)
    try:
        def factory(source: str) -> Restorer:
            return Restorer(client, args, log, source)

        if args.archive is not None:
            restorer = _restore_archive(factory, args, log)
        else:
            restorer = _restore_directory(factory, args, target_dir or "dump", log)
        restorer.restore_indexes()
        restored, failed = restorer.totals()
        log(f"{restored} document(s) restored successfully. {failed} document(s) failed to restore.")
        return EXIT_OK
    except PyMongoError as err:
        raise ToolError(str(err)) from None
    finally:
        client.close()


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------

def _silence_stdout() -> None:
    """After a broken pipe, keep the interpreter's final flush quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


TOOLS = {"mongodump": run_dump, "mongorestore": run_restore}


def main(tool: str, argv: list[str]) -> int:
    runner = TOOLS[tool]
    try:
        return runner(argv)
    except BadOptions as err:
        Logger.always(f"error parsing command line options: {err}")
        Logger.always(f"try '{tool} --help' for more information")
        return EXIT_BAD_OPTIONS
    except ToolError as err:
        Logger.always(f"Failed: {err}")
        _silence_stdout()
        return EXIT_FAILURE
    except KeyboardInterrupt:
        Logger.always("Failed: received termination signal")
        return EXIT_FAILURE
    except Exception as err:  # never leave with a traceback only
        Logger.always(f"Failed: {type(err).__name__}: {err}")
        return EXIT_FAILURE


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
        sys.stderr.write(f"usage: {sys.argv[0]} {{{'|'.join(TOOLS)}}} [options]\n")
        sys.exit(EXIT_BAD_OPTIONS)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
