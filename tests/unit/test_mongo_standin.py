"""Tests of the mongod / mongodump / mongorestore stand-ins (tests/standins/mongo).

The server runs in its own Python 3.13 venv (.sandbox/venv-standin, mongoeco
needs >= 3.13) as a subprocess bound to 127.0.0.1 only; this test process talks
to it with plain pymongo.  The dump/restore tools run with the same 3.13
interpreter, as they will in the stand-in image.

Create the venv with:
    $(pyenv prefix 3.13.0)/bin/python -m venv .sandbox/venv-standin
    .sandbox/venv-standin/bin/pip install -r tests/standins/mongo/requirements.txt
"""

from __future__ import annotations

import datetime
import gzip
import os
import signal
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.ports import free_port

pymongo = pytest.importorskip("pymongo")
import bson  # noqa: E402
from bson import Binary, Decimal128, Int64, ObjectId  # noqa: E402
from bson.codec_options import CodecOptions  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "standins" / "mongo"
VENV_PY = REPO / ".sandbox" / "venv-standin" / "bin" / "python"
SERVER = STANDIN / "mongo_standin_server.py"
MONGODUMP = STANDIN / "mongodump"
MONGORESTORE = STANDIN / "mongorestore"

if not VENV_PY.exists():
    pytest.skip(
        f"stand-in venv missing: {VENV_PY} (create it with Python 3.13 and "
        "pip install -r tests/standins/mongo/requirements.txt)",
        allow_module_level=True,
    )

RAW = CodecOptions(document_class=RawBSONDocument)
SEED_DBS = ("deviceauth", "deviceauth-tenant1", "inventory")
READY_TIMEOUT = 30.0
DEVICES, AUTH_SETS = 150, 60  # per database; mongoeco inserts/index builds are slow (see README)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class Server:
    """One stand-in mongod subprocess on 127.0.0.1."""

    def __init__(self, dbpath: Path, version: str = "4.4.29", env: dict[str, str] | None = None) -> None:
        self.extra_env = dict(env or {})
        self.dbpath = Path(dbpath)
        self.dbpath.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.port = free_port()
        self.log_path = self.dbpath.parent / f"{self.dbpath.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_after = 0.0
        self._client = None
        self.signalled = False

    def launch(self) -> "Server":
        env = dict(os.environ, MONGO_VERSION=self.version, **self.extra_env)
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(VENV_PY), str(SERVER), "--dbpath", str(self.dbpath), "--bind_ip", "127.0.0.1",
             "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if "READY mongodb://" in self.log():
                self.ready_after = time.monotonic() - self.started_at
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"stand-in not ready after {READY_TIMEOUT}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def client(self):
        if self._client is None:
            self._client = pymongo.MongoClient(self.uri, directConnection=True, serverSelectionTimeoutMS=10000)
        return self._client

    def close_client(self) -> None:
        # before SIGTERM: pymongo's close() sends endSessions and would wait
        # for server selection against a server that is going away
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self) -> int | None:
        self.close_client()
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            if not self._log.closed:
                self._log.close()
            return self.proc.returncode
        if not self.signalled:
            self.proc.send_signal(signal.SIGTERM)
            self.signalled = True
        try:
            return self.wait_exit(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise


def start_servers(*servers: Server) -> list[Server]:
    for s in servers:
        s.launch()
    for s in servers:
        s.wait_ready()
    return list(servers)


def stop_servers(*servers: Server) -> None:
    for s in servers:
        s.close_client()
    for s in servers:  # SIGTERM all first, then wait: shutdowns overlap
        if s.proc is not None and s.proc.poll() is None and not s.signalled:
            s.proc.send_signal(signal.SIGTERM)
            s.signalled = True
    for s in servers:
        s.stop()


def run_tool(tool: Path, *args: str, stdin=None, input: bytes | None = None, timeout: float = 60.0):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(VENV_PY), str(tool), *args], stdin=stdin, input=input, capture_output=True,
                          timeout=timeout, env=env)


def raw_docs(client, db: str, coll: str) -> list[bytes]:
    return sorted(d.raw for d in client[db].get_collection(coll, codec_options=RAW).find())


def user_namespaces(client) -> dict[str, list[str]]:
    return {
        db: sorted(client[db].list_collection_names())
        for db in sorted(client.list_database_names())
        if db not in ("admin", "local", "config")
    }


def snapshot(client) -> dict:
    """Every document (raw bytes) and every index of every user namespace."""
    out = {}
    for db, colls in user_namespaces(client).items():
        for coll in colls:
            indexes = sorted((dict(ix) for ix in client[db][coll].list_indexes()), key=lambda i: i["name"])
            out[f"{db}.{coll}"] = (raw_docs(client, db, coll), indexes)
    return out


def seed(client) -> dict[str, int]:
    """Several DBs with varied BSON types and unique/compound/partial/TTL/sparse indexes."""
    counts = {}
    base = datetime.datetime(2024, 3, 1, 12, 30, 15, 123000)
    for n, db_name in enumerate(SEED_DBS):
        db = client[db_name]
        devices = [
            {
                "_id": ObjectId(),
                "id_data": f'{{"mac":"00:11:22:33:{n:02x}:{i:02x}","sku":"d{i % 7}"}}',
                "id_data_sha256": Binary(uuid.UUID(int=i + 1000 * n).bytes * 2, 0),
                "status": ["pending", "accepted", "rejected"][i % 3],
                "created_ts": base + datetime.timedelta(seconds=i),
                "decommissioning": i % 11 == 0,
                "price": Decimal128(f"{i}.{n}5"),
                "counter": Int64(i * 10_000_000_000),
                "small": i,
                "ratio": i / 7.0,
                "tags": [f"t{i % 3}", {"k": i, "nested": {"deep": [1, 2, {"x": None}]}}],
                "uuid": Binary(uuid.UUID(int=i).bytes, 4),
                **({"group": f"g{i % 5}"} if i % 2 else {}),
                **({"expire_at": base + datetime.timedelta(days=36500)} if i % 4 == 0 else {}),
            }
            for i in range(DEVICES)
        ]
        db.devices.insert_many(devices)
        db.auth_sets.insert_many([
            {"_id": str(uuid.UUID(int=i + 7)), "device_id": devices[i // 2]["_id"], "pubkey": f"key-{i % 2}",
             "ts": base}
            for i in range(AUTH_SETS)
        ])
        db.create_collection("empty_coll")
        # indexes after the data (as mongorestore does; faster on mongoeco)
        db.devices.create_index("id_data_sha256", unique=True, name="id_data_sha256_1")
        db.devices.create_index([("status", 1), ("created_ts", -1)], name="status_created")
        db.devices.create_index("uuid", unique=True, sparse=True, name="uuid_sparse")
        db.devices.create_index("group", name="group_partial",
                                partialFilterExpression={"group": {"$exists": True}})
        db.devices.create_index("expire_at", expireAfterSeconds=3600, name="expire_ttl")
        db.auth_sets.create_index([("device_id", 1), ("pubkey", 1)], unique=True, name="devid_pubkey")
        db.empty_coll.create_index("x", unique=True, name="x_unique")
        counts[f"{db_name}.devices"] = DEVICES
        counts[f"{db_name}.auth_sets"] = AUTH_SETS
        counts[f"{db_name}.empty_coll"] = 0
    return counts


# --------------------------------------------------------------------------
# fixtures: servers are started together (startup is import-bound)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("mongo-standin")
    names = ("source", "roundtrip", "nsinclude", "scratch")
    started = {name: Server(root / name) for name in names}
    try:
        start_servers(*started.values())
        yield started
    finally:
        stop_servers(*started.values())


@pytest.fixture(scope="module")
def seeded(servers):
    return seed(servers["source"].client)


@pytest.fixture(scope="module")
def archive_file(servers, seeded, tmp_path_factory):
    """An uncompressed archive of the seeded source (module-wide)."""
    path = tmp_path_factory.mktemp("archive") / "dump.archive"
    result = run_tool(MONGODUMP, "--host", f"127.0.0.1:{servers['source'].port}", f"--archive={path}")
    assert result.returncode == 0, result.stderr.decode()
    return path


# --------------------------------------------------------------------------
# server behaviour
# --------------------------------------------------------------------------


def test_server_identity_and_admin_commands(servers, seeded):
    src = servers["source"]
    client = src.client
    assert src.ready_after < 20, f"slow start: {src.ready_after:.2f}s"
    info = client.server_info()  # pymongo sends lowercase "buildinfo"
    assert info["version"] == "4.4.29"
    assert info["versionArray"][:3] == [4, 4, 29]
    assert client.admin.command("buildInfo")["version"] == "4.4.29"
    assert client.admin.command("serverStatus")["version"] == "4.4.29"
    assert client.admin.command("ping")["ok"] == 1
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True and hello["maxWireVersion"] == 9
    assert client.admin.command("isMaster")["ismaster"] is True
    fcv = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
    assert fcv["featureCompatibilityVersion"] == {"version": "4.4"}
    # Decimal128 documents exist: listDatabases / dbStats must not crash (shim 3)
    assert set(SEED_DBS) <= set(client.list_database_names())
    assert client["deviceauth"].command("dbStats")["ok"] == 1
    # rename is sent to admin by pymongo (shim 2)
    scratch = client["standin_rename"]
    scratch.a.insert_one({"x": 1})
    scratch.a.rename("b")
    assert scratch.list_collection_names() == ["b"]
    client.drop_database("standin_rename")


def test_duplicate_keys_rejected_by_batched_inserts(servers):
    coll = servers["scratch"].client["standin_dups"]["c"]
    coll.create_index("email", unique=True)
    with pytest.raises(pymongo.errors.BulkWriteError) as err:
        coll.insert_many([{"_id": 1, "email": "a"}, {"_id": 2, "email": "b"}, {"_id": 1, "email": "c"},
                          {"_id": 3, "email": "a"}, {"_id": 4, "email": "d"}], ordered=False)
    details = err.value.details
    assert details["nInserted"] == 3
    assert sorted(e["index"] for e in details["writeErrors"]) == [2, 3]
    assert all(e["code"] == 11000 for e in details["writeErrors"])
    oid = ObjectId()
    coll.insert_one({"_id": oid, "email": "x"})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        coll.insert_one({"_id": oid, "email": "y"})
    with pytest.raises(pymongo.errors.BulkWriteError) as err:
        coll.insert_many([{"_id": 10, "email": "k"}, {"_id": 10, "email": "l"}, {"_id": 11, "email": "m"}])
    assert err.value.details["nInserted"] == 1  # ordered stops at the first error
    assert sorted(d["_id"] for d in coll.find({}, {"_id": 1}) if isinstance(d["_id"], int)) == [1, 2, 4, 10]
    servers["scratch"].client.drop_database("standin_dups")


@pytest.fixture
def make_server():
    made: list[Server] = []

    def make(dbpath: Path, version: str = "4.4.29", env: dict[str, str] | None = None) -> Server:
        server = Server(dbpath, version, env)
        made.append(server)
        return server

    yield make
    stop_servers(*made)


def test_fcv_lifecycle_restart_and_upgrade_problem(tmp_path, make_server):
    dbpath = tmp_path / "db"
    Server = make_server  # noqa: N806 - every server started here is stopped at teardown
    s44 = start_servers(Server(dbpath, "4.4.29"))[0]
    admin = s44.client.admin
    get_fcv = lambda c: c.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})[  # noqa: E731
        "featureCompatibilityVersion"]["version"]
    assert get_fcv(s44.client) == "4.4"  # fresh dbpath: the server's own version
    for bad in ("5.0", "4.0", "3.6"):
        with pytest.raises(pymongo.errors.OperationFailure) as err:
            admin.command({"setFeatureCompatibilityVersion": bad})
        assert err.value.code == 2 and "Expected '4.4' or '4.2'" in str(err.value)
    with pytest.raises(pymongo.errors.OperationFailure) as err:
        s44.client["deviceauth"].command({"setFeatureCompatibilityVersion": "4.2"})
    assert "admin database" in str(err.value)
    assert admin.command({"setFeatureCompatibilityVersion": "4.2"})["ok"] == 1
    assert get_fcv(s44.client) == "4.2"
    s44.client["deviceauth"].devices.insert_one({"_id": "keep-me", "v": Decimal128("1.5")})

    # second server on the same dbpath is refused (mongod.lock)
    clash = Server(dbpath, "4.4.29").launch()
    assert clash.wait_exit(30) == 100
    assert "DBPathInUse" in clash.log()

    # SIGTERM under write load: running requests drain, clean exit, no torn batch
    writer_client = pymongo.MongoClient(s44.uri, directConnection=True, serverSelectionTimeoutMS=2000,
                                        retryWrites=False)
    batches = []

    def write_load():
        try:
            while True:
                writer_client["deviceauth"].load.insert_many([{"b": len(batches), "i": i} for i in range(100)])
                batches.append(1)
        except pymongo.errors.PyMongoError:
            pass

    writer = threading.Thread(target=write_load, daemon=True)
    writer.start()
    deadline = time.monotonic() + 10
    while len(batches) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s44.stop() == 0  # SIGTERM: clean exit
    writer.join(15)
    writer_client.close()
    assert "Now exiting" in s44.log()

    # 5.0 binary on FCV 4.2 data: the skipped-major refusal of real mongod
    s50 = Server(dbpath, "5.0.26").launch()
    assert s50.wait_exit(30) == 62
    log = s50.log()
    assert "UPGRADE PROBLEM: Found an invalid featureCompatibilityVersion document" in log
    assert 'version: \\"4.2\\"' in log or 'version: "4.2"' in log
    assert "READY" not in log

    # restart with 4.4 on the same dbpath: data and FCV survive; then the proper path (FCV 4.4, 5.0)
    s44b = start_servers(Server(dbpath, "4.4.29"))[0]
    assert s44b.client["deviceauth"].devices.find_one({"_id": "keep-me"})["v"] == Decimal128("1.5")
    loaded = s44b.client["deviceauth"].load.count_documents({})
    assert loaded >= 300 and loaded % 100 == 0, loaded
    assert get_fcv(s44b.client) == "4.2"
    s44b.client.admin.command({"setFeatureCompatibilityVersion": "4.4"})
    assert s44b.stop() == 0
    s50b = start_servers(Server(dbpath, "5.0.26"))[0]
    assert s50b.client.server_info()["version"] == "5.0.26"
    assert s50b.client.admin.command("hello")["maxWireVersion"] == 13
    assert get_fcv(s50b.client) == "4.4"
    assert s50b.client["deviceauth"].devices.count_documents({}) == 1
    with pytest.raises(pymongo.errors.OperationFailure):
        s50b.client.admin.command({"setFeatureCompatibilityVersion": "4.2"})
    s50b.client.admin.command({"setFeatureCompatibilityVersion": "5.0"})
    assert get_fcv(s50b.client) == "5.0"
    assert s50b.stop() == 0

    # and a 4.4 binary cannot open FCV 5.0 data
    back = Server(dbpath, "4.4.29").launch()
    assert back.wait_exit(30) == 62
    assert "UPGRADE PROBLEM" in back.log()

    # data "written by mongod 4.2" (STANDIN_INITIAL_FCV on a fresh dbpath) refuses 5.0 right away
    old_data = Server(tmp_path / "from42", "5.0.26", env={"STANDIN_INITIAL_FCV": "4.2"}).launch()
    assert old_data.wait_exit(30) == 62
    assert "UPGRADE PROBLEM" in old_data.log()


# --------------------------------------------------------------------------
# mongodump / mongorestore
# --------------------------------------------------------------------------


def test_dump_restore_roundtrip_through_gzip_pipe(servers, seeded):
    src, dst = servers["source"], servers["roundtrip"]
    # a stale namespace on the target that the archive replaces
    dst.client["deviceauth"].devices.insert_one({"_id": "stale", "x": 1})
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    dump = subprocess.Popen(
        [str(VENV_PY), str(MONGODUMP), "--host", f"127.0.0.1:{src.port}", "--archive", "--gzip"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    restore = subprocess.Popen(
        [str(VENV_PY), str(MONGORESTORE), "--host", "127.0.0.1", "--port", str(dst.port),
         "--archive", "--gzip", "--drop"],
        stdin=dump.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dump.stdout.close()
    _, restore_err = restore.communicate(timeout=120)
    _, dump_err = dump.communicate(timeout=120)
    elapsed = time.monotonic() - started
    dump_err, restore_err = dump_err.decode(), restore_err.decode()
    assert dump.returncode == 0, dump_err
    assert restore.returncode == 0, restore_err
    total = sum(seeded.values())
    assert "writing deviceauth.devices to archive on stdout" in dump_err
    assert f"done dumping deviceauth.devices ({DEVICES} documents)" in dump_err
    assert "done dumping inventory.empty_coll (0 documents)" in dump_err
    assert f"{total} document(s) restored successfully. 0 document(s) failed to restore." in restore_err

    source_snapshot = snapshot(src.client)
    target_snapshot = snapshot(dst.client)
    assert set(source_snapshot) == {ns for ns in seeded}
    assert set(target_snapshot) == set(source_snapshot)
    for ns, (docs, indexes) in source_snapshot.items():
        target_docs, target_indexes = target_snapshot[ns]
        assert len(docs) == seeded[ns]
        assert target_docs == docs, f"{ns}: documents differ"
        assert target_indexes == indexes, f"{ns}: indexes differ"
    names = {ix["name"]: ix for ix in target_snapshot["deviceauth.devices"][1]}
    assert names["id_data_sha256_1"]["unique"] is True
    assert names["group_partial"]["partialFilterExpression"] == {"group": {"$exists": True}}
    assert names["expire_ttl"]["expireAfterSeconds"] == 3600
    assert list(names["status_created"]["key"].items()) == [("status", 1), ("created_ts", -1)]
    print(f"\ndump|restore of {total} docs in {len(seeded)} collections: {elapsed:.2f}s")


def _iter_archive(data: bytes):
    """Independent reader of the mongodump archive layout."""
    assert struct.unpack("<I", data[:4])[0] == 0x8199E26D
    pos = 4

    def next_item():
        nonlocal pos
        if data[pos:pos + 4] == b"\xff\xff\xff\xff":
            pos += 4
            return None
        size = struct.unpack("<i", data[pos:pos + 4])[0]
        doc = data[pos:pos + size]
        pos += size
        return doc

    header = bson.decode(next_item())
    prelude = []
    while (item := next_item()) is not None:
        prelude.append(bson.decode(item))
    blocks = []
    while pos < len(data):
        nsh = bson.decode(next_item())
        docs = []
        while (item := next_item()) is not None:
            docs.append(item)
        blocks.append((nsh, docs))
    return header, prelude, blocks


def _crc64_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xC96C5795D7870F42 if crc & 1 else crc >> 1
    crc ^= 0xFFFFFFFFFFFFFFFF
    return crc - (1 << 64) if crc >= 1 << 63 else crc


def test_archive_has_mongodump_layout(archive_file, seeded):
    header, prelude, blocks = _iter_archive(archive_file.read_bytes())
    assert header["version"] == "0.1" and header["server_version"] == "4.4.29"
    assert {"concurrent_collections", "tool_version"} <= set(header)
    assert {f"{m['db']}.{m['collection']}" for m in prelude} == set(seeded)
    meta = next(m for m in prelude if m["db"] == "deviceauth" and m["collection"] == "devices")
    metadata = bson.json_util.loads(meta["metadata"])
    assert metadata["collectionName"] == "devices"
    assert metadata["indexes"][0] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    assert '"$numberInt"' in meta["metadata"]  # canonical extended JSON
    seen_docs: dict[str, list[bytes]] = {}
    eof: dict[str, int] = {}
    for nsh, docs in blocks:
        ns = f"{nsh['db']}.{nsh['collection']}"
        assert isinstance(nsh["CRC"], int) and isinstance(nsh["EOF"], bool)
        if nsh["EOF"]:
            assert docs == [] and ns not in eof
            eof[ns] = nsh["CRC"]
        else:
            seen_docs.setdefault(ns, []).extend(docs)
    assert set(eof) == set(seeded)
    for ns, count in seeded.items():
        docs = seen_docs.get(ns, [])
        assert len(docs) == count
        assert eof[ns] == _crc64_bitwise(b"".join(docs)), ns


def test_restore_ns_include(servers, archive_file, seeded):
    dst = servers["nsinclude"]
    result = run_tool(MONGORESTORE, "--host", f"127.0.0.1:{dst.port}", f"--archive={archive_file}",
                      "--nsInclude", "deviceauth.*", "--nsInclude", "inventory.auth_sets")
    assert result.returncode == 0, result.stderr.decode()
    assert user_namespaces(dst.client) == {
        "deviceauth": ["auth_sets", "devices", "empty_coll"],
        "inventory": ["auth_sets"],
    }
    assert raw_docs(dst.client, "inventory", "auth_sets") == raw_docs(servers["source"].client, "inventory", "auth_sets")
    expected = seeded["deviceauth.devices"] + seeded["deviceauth.auth_sets"] + seeded["inventory.auth_sets"]
    assert f"{expected} document(s) restored successfully." in result.stderr.decode()
    # wildcard over database names
    result = run_tool(MONGORESTORE, "--host", f"127.0.0.1:{dst.port}", f"--archive={archive_file}",
                      "--nsInclude", "deviceauth-*.devices", "--quiet")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert user_namespaces(dst.client)["deviceauth-tenant1"] == ["devices"]


def test_restore_drop_replaces_existing_data(servers, archive_file, seeded):
    dst, src = servers["scratch"], servers["source"]
    dst.client.drop_database("inventory")
    source_docs = raw_docs(src.client, "inventory", "devices")
    first = bson.decode(source_docs[0])
    coll = dst.client["inventory"].devices
    coll.insert_many([{"_id": "extra-1", "id_data_sha256": "x1"}, {"_id": "extra-2", "id_data_sha256": "x2"},
                      {"_id": first["_id"], "id_data_sha256": "x3", "changed": True}])

    # without --drop: existing docs stay, the clashing _id is a counted failure
    result = run_tool(MONGORESTORE, "--host", f"127.0.0.1:{dst.port}", f"--archive={archive_file}",
                      "--nsInclude", "inventory.devices")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert f"{seeded['inventory.devices'] - 1} document(s) restored successfully. 1 document(s) failed" in err
    assert "continuing through error" in err and "E11000" in err
    assert coll.count_documents({}) == seeded["inventory.devices"] + 2
    assert coll.find_one({"_id": first["_id"]})["changed"] is True

    # with --drop: exactly the archived collection
    result = run_tool(MONGORESTORE, "--host", f"127.0.0.1:{dst.port}", f"--archive={archive_file}",
                      "--nsInclude", "inventory.devices", "--drop")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "dropping collection inventory.devices before restoring" in err
    assert f"{seeded['inventory.devices']} document(s) restored successfully. 0 document(s) failed" in err
    assert coll.find_one({"_id": "extra-1"}) is None
    assert raw_docs(dst.client, "inventory", "devices") == source_docs
    dst.client.drop_database("inventory")


def test_restore_rejects_truncated_and_corrupt_archives(servers, archive_file, tmp_path):
    dst = servers["scratch"]
    data = archive_file.read_bytes()
    host = ["--host", f"127.0.0.1:{dst.port}"]

    # truncated just before the final EOF block: the stream looks fine but is incomplete
    last_eof = bson.encode(bson.son.SON([("db", "inventory"), ("collection", "empty_coll"), ("EOF", True),
                                         ("CRC", Int64(0))])) + b"\xff\xff\xff\xff"
    assert data.endswith(last_eof)
    truncated = data[: -len(last_eof)]
    result = run_tool(MONGORESTORE, *host, "--archive", "--nsInclude", "nothing.matches", input=truncated)
    assert result.returncode != 0
    assert b"archive finished before all collections were seen" in result.stderr

    # truncated gzip stream
    gz = gzip.compress(data)
    result = run_tool(MONGORESTORE, *host, "--archive", "--gzip", "--nsInclude", "nothing.matches",
                      input=gz[: len(gz) // 2])
    assert result.returncode != 0 and b"Failed:" in result.stderr

    # one flipped byte inside a document: CRC mismatch
    marker = b'"mac":"00:11:22:33:00:05"'
    at = data.index(marker)
    corrupt = data[:at] + marker.replace(b"05", b"06") + data[at + len(marker):]
    result = run_tool(MONGORESTORE, *host, "--archive", "--nsInclude", "deviceauth.devices",
                      "--nsFrom", "deviceauth.$c$", "--nsTo", "standin_crc.$c$", input=corrupt)
    assert result.returncode != 0
    assert b"CRC mismatch for namespace deviceauth.devices" in result.stderr

    # not an archive at all / gzip data without --gzip
    result = run_tool(MONGORESTORE, *host, "--archive", input=gz)
    assert result.returncode != 0
    assert b"does not appear to be a mongodump archive" in result.stderr
    dst.client.drop_database("standin_crc")


def test_directory_format_roundtrip_with_rename(servers, seeded, tmp_path):
    src, dst = servers["source"], servers["scratch"]
    out = tmp_path / "dump"
    result = run_tool(MONGODUMP, "--uri", src.uri, "--db", "deviceauth-tenant1", "--out", str(out), "--gzip")
    assert result.returncode == 0, result.stderr.decode()
    assert (out / "deviceauth-tenant1" / "devices.bson.gz").exists()
    assert (out / "deviceauth-tenant1" / "devices.metadata.json.gz").exists()
    result = run_tool(MONGORESTORE, "--uri", dst.uri, "--gzip", "--nsFrom", "deviceauth-tenant1.$c$",
                      "--nsTo", "standin_dir.$c$", "--drop", str(out))
    assert result.returncode == 0, result.stderr.decode()
    for coll in ("devices", "auth_sets", "empty_coll"):
        assert raw_docs(dst.client, "standin_dir", coll) == raw_docs(src.client, "deviceauth-tenant1", coll)
    dst.client.drop_database("standin_dir")


def test_tools_fail_fast_on_dead_server_and_bad_flags(tmp_path):
    port = free_port()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)

    def spawn(tool: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(VENV_PY), str(tool), *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    started = time.monotonic()
    runs = {
        "dump": spawn(MONGODUMP, "--host", f"127.0.0.1:{port}", "--archive", "--gzip"),
        "restore": spawn(MONGORESTORE, "--host", "127.0.0.1", "--port", str(port), "--archive"),
        "bogus": spawn(MONGODUMP, "--host", f"127.0.0.1:{port}", "--bogus-flag"),
        # like the real mongodump, --nsInclude is a mongorestore-only option
        "nsinclude": spawn(MONGODUMP, "--nsInclude", "a.*"),
        "host+uri": spawn(MONGODUMP, "--uri", f"mongodb://127.0.0.1:{port}/", "--host", "127.0.0.1"),
    }
    out = {name: (p, *p.communicate(timeout=60)) for name, p in runs.items()}
    assert time.monotonic() - started < 15

    proc, stdout, stderr = out["dump"]
    assert proc.returncode == 1
    assert stdout == b""  # nothing that could pass for an archive
    assert b"Failed: can't create session" in stderr
    proc, _, stderr = out["restore"]
    assert proc.returncode == 1 and b"Failed:" in stderr
    proc, _, stderr = out["bogus"]
    assert proc.returncode == 3 and b"error parsing command line options" in stderr
    assert out["nsinclude"][0].returncode == 3
    proc, _, stderr = out["host+uri"]
    assert proc.returncode == 3 and b"cannot specify --host and --uri" in stderr


def test_dump_to_closed_pipe_fails(servers, seeded):
    src = servers["source"]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    dump = subprocess.Popen([str(VENV_PY), str(MONGODUMP), "--host", f"127.0.0.1:{src.port}", "--archive"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dump.stdout.read(100)
    dump.stdout.close()  # the consumer goes away mid-stream
    _, err = dump.communicate(timeout=60)
    assert dump.returncode == 1, err.decode()
    assert b"Failed:" in err and b"broken pipe" in err
