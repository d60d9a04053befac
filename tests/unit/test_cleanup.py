"""tasks/cleanup.py and `mender-upgrade cleanup` against the real MongoDB-wire stand-in.

Two stand-in servers (tests/standins/mongo, Python 3.13 venv) run as subprocesses on
127.0.0.1, one per deviceauth layout; every test re-seeds its server with `mender_upgrade.sandbox.seed`,
whose summary (which ids are valid, which are leftovers) is the oracle. No Docker, no mocks
of MongoDB.
"""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect (mender_upgrade.tasks.cleanup does): no results in ~/.prefect, no telemetry.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import hashlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import bson  # noqa: E402
from bson.binary import Binary, UuidRepresentation  # noqa: E402
import pytest  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mender_upgrade.sandbox.seed import SeedSummary, seed_mongo  # noqa: E402
from mender_upgrade.tasks import cleanup, steps  # noqa: E402
from mender_upgrade.tasks.errors import TransientError, UpgradeError, retry_on_transient  # noqa: E402
from mender_upgrade.tasks.mongo import MongoUnreachable  # noqa: E402
from mender_upgrade.tasks.store import ChecksumMismatch, LocalStore  # noqa: E402
from tests.ports import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".sandbox" / "venv-standin" / "bin" / "python"
SERVER = REPO / "tests" / "standins" / "mongo" / "mongo_standin_server.py"
SYSTEM_DBS = ("admin", "local", "config")

if not VENV_PY.exists():
    pytest.skip(f"stand-in venv missing: {VENV_PY} (see tests/unit/test_mongo_standin.py)", allow_module_level=True)


class StandIn:
    """One mongo stand-in subprocess bound to 127.0.0.1."""

    def __init__(self, dbpath: Path) -> None:
        dbpath.mkdir(parents=True)
        self.port = free_port()
        self.log = dbpath.parent / f"{dbpath.name}.log"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(VENV_PY), str(SERVER), "--bind_ip", "127.0.0.1", "--port", str(self.port),
                                          "--dbpath", str(dbpath)], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.client: MongoClient | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 30) -> "StandIn":
        deadline = time.monotonic() + timeout
        while "READY mongodb://" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "stand-in not ready"
            time.sleep(0.05)
        self.client = MongoClient(self.url, serverSelectionTimeoutMS=10000)
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("cleanup-standin")
    started = {"per-tenant": StandIn(root / "per-tenant"), "tenant-field": StandIn(root / "tenant-field")}
    try:
        for s in started.values():
            s.wait_ready()
        yield started
    finally:
        for s in started.values():
            s.stop()


@dataclass
class Seeded:
    client: MongoClient
    url: str
    summary: SeedSummary


def reseed(server: StandIn, per_tenant_databases: bool) -> Seeded:
    client = server.client
    for name in client.list_database_names():
        if name not in SYSTEM_DBS:
            client.drop_database(name)
    summary = seed_mongo(client, per_tenant_databases=per_tenant_databases)
    # tokens sit under a TTL index (like deviceauth's): they must not have expired
    for database in {t.database for t in summary.tenants}:
        expected = sum(len(t.valid_tokens) + len(t.leftover_tokens) for t in summary.tenants if t.database == database)
        assert client[database].tokens.count_documents({}) == expected, "seeded tokens were purged"
    return Seeded(client, server.url, summary)


@pytest.fixture(params=["per-tenant", "tenant-field"])
def seeded(request, servers) -> Seeded:
    return reseed(servers[request.param], per_tenant_databases=request.param == "per-tenant")


@pytest.fixture
def per_tenant(servers) -> Seeded:
    return reseed(servers["per-tenant"], per_tenant_databases=True)


@pytest.fixture
def tenant_field(servers) -> Seeded:
    return reseed(servers["tenant-field"], per_tenant_databases=False)


# ------------------------------------------------------------------------------------------
# oracle helpers


def expected_leftovers(summary: SeedSummary) -> dict[tuple[str, str], dict[str, set]]:
    return {(t.database, t.tenant_id): {"devices": set(t.decommissioning_devices), "auth_sets": set(t.leftover_auth_sets),
                                        "tokens": set(t.leftover_tokens)} for t in summary.tenants}


def found_leftovers(leftovers: cleanup.Leftovers) -> dict[tuple[str, str], dict[str, set]]:
    return {(s.scope.database, s.scope.tenant_id): {c: set(s.ids(c)) for c in cleanup.COLLECTIONS}
            for s in leftovers.scopes}


def snapshot(client: MongoClient) -> dict[str, dict[str, bytes]]:
    """Every document of every user database, as raw BSON bytes by _id."""
    out = {}
    for name in client.list_database_names():
        if name in SYSTEM_DBS:
            continue
        for coll in client[name].list_collection_names():
            docs = client[name].get_collection(coll, codec_options=cleanup.RAW).find()
            out[f"{name}.{coll}"] = {bson.encode({"k": d["_id"]}): d.raw for d in docs}
    return out


def without_leftovers(before: dict[str, dict[str, bytes]], summary: SeedSummary, tenants=None) -> dict:
    """`before` minus exactly the seeded leftovers (of `tenants`, default all)."""
    gone: dict[str, set] = {}
    for t in summary.tenants:
        if tenants is not None and t.tenant_id not in tenants:
            continue
        for coll, ids in (("devices", t.decommissioning_devices), ("auth_sets", t.leftover_auth_sets),
                          ("tokens", t.leftover_tokens)):
            gone.setdefault(f"{t.database}.{coll}", set()).update(bson.encode({"k": i}) for i in ids)
    return {ns: {k: v for k, v in docs.items() if k not in gone.get(ns, set())} for ns, docs in before.items()}


def valid_ids(summary: SeedSummary) -> dict[str, set]:
    out: dict[str, set] = {}
    for t in summary.tenants:
        for coll, ids in (("devices", t.valid_devices), ("auth_sets", t.valid_auth_sets), ("tokens", t.valid_tokens)):
            out.setdefault(f"{t.database}.{coll}", set()).update(ids)
    return out


# ------------------------------------------------------------------------------------------
# finding (read-only)


def test_layout_detected_and_leftovers_match_the_seed_exactly(seeded):
    before = snapshot(seeded.client)
    layout = cleanup.detect_layout(seeded.client)
    assert layout is (cleanup.Layout.PER_TENANT_DATABASES if seeded.summary.per_tenant_databases
                      else cleanup.Layout.TENANT_FIELD)
    leftovers = cleanup.find_decommissioned_leftovers(seeded.client)
    assert len(leftovers.scopes) == 3  # default tenant + two
    assert found_leftovers(leftovers) == expected_leftovers(seeded.summary)
    assert leftovers.count == 3 * (3 + 8 + 8)
    # nothing valid was picked up
    for ns, ids in valid_ids(seeded.summary).items():
        database, coll = ns.rsplit(".", 1)
        assert not ids & {i for s in leftovers.scopes if s.scope.database == database for i in s.ids(coll)}
    rows = leftovers.rows()
    assert [(r["devices"], r["auth_sets"], r["tokens"]) for r in rows] == [(3, 8, 8)] * 3
    assert snapshot(seeded.client) == before  # a dry run changes nothing


def test_unknown_database_or_tenant_is_named_with_the_existing_ones(seeded):
    client = seeded.client
    with pytest.raises(cleanup.CleanupScopeNotFound) as err:
        cleanup.find_decommissioned_leftovers(client, databases=["deviceauth-nosuchtenant"])
    assert "'deviceauth-nosuchtenant' does not exist" in err.value.message
    assert "deviceauth" in err.value.hint
    with pytest.raises(cleanup.CleanupScopeNotFound) as err:
        cleanup.find_decommissioned_leftovers(client, databases=["inventory"])
    assert "not a deviceauth database" in err.value.message
    with pytest.raises(cleanup.CleanupScopeNotFound) as err:
        cleanup.find_decommissioned_leftovers(client, tenants=["0000"])
    assert "tenant '0000' has no deviceauth data" in err.value.message
    for t in seeded.summary.tenants:
        assert repr(t.tenant_id) in err.value.hint
    other = MongoClient(seeded.url)
    try:
        other.drop_database("deviceauth")
        for t in seeded.summary.tenants:
            other.drop_database(t.database)
        with pytest.raises(cleanup.NoDeviceauthDatabase) as err:
            cleanup.find_decommissioned_leftovers(other)
        assert "inventory" in err.value.message  # lists what is there
    finally:
        other.close()


def test_count_old_clients_matches_the_seed(per_tenant):
    seeded = per_tenant  # inventory is laid out alike in both seeds
    result = cleanup.count_old_clients(seeded.client)
    assert result.old == seeded.summary.inventory_old_clients
    assert result.total == sum(len(t.valid_devices) for t in seeded.summary.tenants)
    assert set(result.versions) <= {"1.6.1", "1.7.0"} and sum(result.versions.values()) == result.old
    assert cleanup.count_old_clients(seeded.client, below="1.0.0").old == 0
    with pytest.raises(UpgradeError, match="not a version"):
        cleanup.count_old_clients(seeded.client, below="old")


# ------------------------------------------------------------------------------------------
# apply, verify, idempotence, restore


def test_apply_removes_exactly_the_leftovers_and_is_idempotent(seeded, tmp_path):
    client, summary = seeded.client, seeded.summary
    before = snapshot(client)
    store = LocalStore(tmp_path / "backups")
    report = cleanup.apply_cleanup(client, store, "run-1", log=lambda m: None)
    # every valid device, auth set and token and every other database byte-identical; leftovers gone
    assert snapshot(client) == without_leftovers(before, summary)
    assert report.remaining == 0
    per_db = 3 if summary.per_tenant_databases else 1
    assert sum(report.deleted.values()) == 3 * 19
    assert len(report.rows()) == per_db * 3
    for row in report.rows():
        assert row["after"] == row["before"] - row["leftovers"] and row["deleted"] == row["leftovers"]
    assert report.receipt.documents == {ns: n for ns, n in report.leftovers.items() if n}
    assert report.receipt.sha256 == hashlib.sha256((tmp_path / "backups" / report.receipt.key).read_bytes()).hexdigest()
    manifest = json.loads((tmp_path / "backups" / report.receipt.manifest_key).read_bytes())
    assert manifest["sha256"] == report.receipt.sha256 and manifest["layout"] == report.layout.value

    again = cleanup.apply_cleanup(client, store, "run-2", log=lambda m: None)
    assert sum(again.deleted.values()) == 0 and again.receipt is None and again.remaining == 0
    assert store.list_keys("cleanup/run-2") == []
    assert snapshot(client) == without_leftovers(before, summary)


def test_saved_documents_restore_byte_exact_and_restore_is_idempotent(seeded, tmp_path):
    client = seeded.client
    before = snapshot(client)
    store = LocalStore(tmp_path / "backups")
    report = cleanup.apply_cleanup(client, store, "run-r", log=lambda m: None)

    # the file holds each deleted document byte for byte
    manifest, entries = cleanup.read_saved(store, report.receipt.key)
    for e in entries:
        assert before[f"{e['db']}.{e['collection']}"][bson.encode({"k": e["document"]["_id"]})] == e["document"].raw
    assert len(entries) == 57 and manifest["fingerprint"] == report.receipt.fingerprint

    restored = cleanup.restore_leftovers(client, store, report.receipt.key)
    assert sum(restored.restored.values()) == 57
    assert snapshot(client) == before
    twice = cleanup.restore_leftovers(client, store, report.receipt.manifest_key)  # either file names the copy
    assert sum(twice.restored.values()) == 0 and sum(twice.already_present.values()) == 57
    assert snapshot(client) == before


def test_restore_refuses_a_damaged_copy_and_reports_conflicts(per_tenant, tmp_path):
    client = per_tenant.client
    store = LocalStore(tmp_path / "backups")
    report = cleanup.apply_cleanup(client, store, "run-x", log=lambda m: None)
    saved = tmp_path / "backups" / report.receipt.key
    good = saved.read_bytes()
    saved.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    after_cleanup = snapshot(client)
    with pytest.raises(ChecksumMismatch, match="nothing was restored|manifest records"):
        cleanup.restore_leftovers(client, store, report.receipt.key)
    assert snapshot(client) == after_cleanup
    saved.write_bytes(good)

    # a device registered again under a saved _id: not overwritten, named, the rest restored
    tenant = per_tenant.summary.tenants[0]
    taken = tenant.decommissioning_devices[0]
    client[tenant.database].devices.insert_one({"_id": taken, "status": "pending", "id_data_sha256": b"new"})
    with pytest.raises(cleanup.RestoreConflict) as err:
        cleanup.restore_leftovers(client, store, report.receipt.key)
    assert taken in err.value.message
    assert client[tenant.database].devices.find_one({"_id": taken})["status"] == "pending"
    assert client[tenant.database].auth_sets.count_documents({"_id": {"$in": tenant.leftover_auth_sets}}) == 8


def test_tenant_and_database_filters_touch_only_their_scope(per_tenant, tenant_field, tmp_path):
    # real >= 3.6 tokens carry the tenant as the `mender.tenant` claim, not tenant_id
    tenant_field.client.deviceauth.tokens.update_many({}, {"$unset": {"tenant_id": ""}})
    for seeded, kwargs in ((tenant_field, {"tenants": [tenant_field.summary.tenants[1].tenant_id]}),
                           (per_tenant, {"databases": [per_tenant.summary.tenants[2].database]})):
        before = snapshot(seeded.client)
        chosen = seeded.summary.tenants[1 if "tenants" in kwargs else 2]
        report = cleanup.apply_cleanup(seeded.client, LocalStore(tmp_path / chosen.database), "filtered",
                                       log=lambda m: None, **kwargs)
        assert sum(report.deleted.values()) == 19
        assert snapshot(seeded.client) == without_leftovers(before, seeded.summary, tenants={chosen.tenant_id})
    # the default tenant alone, by its empty id
    report = cleanup.apply_cleanup(tenant_field.client, LocalStore(tmp_path / "t0"), "t0", tenants=[""],
                                   log=lambda m: None)
    assert sum(report.deleted.values()) == 19


def test_tokens_with_binary_uuid_ids_and_no_tenant_field_are_found(tenant_field, tmp_path):
    # newer deviceauth stores a token's _id (= its auth set's id) as a binary UUID, and tokens
    # carry the tenant as a claim, not tenant_id
    client, summary = tenant_field.client, tenant_field.summary
    tokens = list(client.deviceauth.tokens.find())
    client.deviceauth.tokens.delete_many({})
    for t in tokens:
        t["_id"] = Binary.from_uuid(uuid.UUID(t.pop("_id")), UuidRepresentation.STANDARD)
        t.pop("tenant_id")
    client.deviceauth.tokens.insert_many(tokens)
    as_binary = lambda ids: {Binary.from_uuid(uuid.UUID(i), UuidRepresentation.STANDARD) for i in ids}  # noqa: E731
    leftover = set().union(*(as_binary(t.leftover_tokens) for t in summary.tenants))
    valid = set().union(*(as_binary(t.valid_tokens) for t in summary.tenants))
    found = cleanup.find_decommissioned_leftovers(client)
    assert {i for s in found.scopes for i in s.ids("tokens")} == leftover
    cleanup.apply_cleanup(client, LocalStore(tmp_path), "binary", log=lambda m: None)
    assert {t["_id"] for t in client.deviceauth.tokens.find({}, {"_id": 1})} == valid


def test_per_tenant_databases_left_behind_by_the_3_6_migration_are_not_touched(tenant_field, tmp_path):
    client = tenant_field.client
    stale = "deviceauth-5f1a2b3c4d5e6f7a8b9c0d1e"
    client[stale].devices.insert_one({"_id": "stale-dev", "decommissioning": True})
    leftovers = cleanup.find_decommissioned_leftovers(client)
    assert leftovers.ignored_databases == [stale]
    assert {s.scope.database for s in leftovers.scopes} == {"deviceauth"}
    with pytest.raises(cleanup.CleanupScopeNotFound) as err:
        cleanup.find_decommissioned_leftovers(client, databases=[stale])
    assert "--tenant 5f1a2b3c4d5e6f7a8b9c0d1e" in err.value.hint
    cleanup.apply_cleanup(client, LocalStore(tmp_path), "r", log=lambda m: None)
    assert client[stale].devices.count_documents({}) == 1


# ------------------------------------------------------------------------------------------
# faults


def test_interrupted_between_save_and_delete_rerun_finds_the_same_set_and_completes(seeded, tmp_path):
    client, summary = seeded.client, seeded.summary
    before = snapshot(client)
    store = LocalStore(tmp_path / "backups")
    first = cleanup.find_decommissioned_leftovers(client)
    receipt = cleanup.save_leftovers(store, first, "interrupted")
    # ... the process stops here: saved, nothing deleted
    assert snapshot(client) == before

    rerun = cleanup.find_decommissioned_leftovers(client)
    assert rerun.fingerprint() == first.fingerprint() == receipt.fingerprint
    report = cleanup.apply_cleanup(client, store, "rerun", log=lambda m: None)
    assert report.receipt.fingerprint == receipt.fingerprint
    assert report.receipt.sha256 == receipt.sha256  # the very same bytes saved again
    assert snapshot(client) == without_leftovers(before, summary)


def test_interrupted_half_way_through_deleting_rerun_completes(per_tenant, tmp_path):
    client, summary = per_tenant.client, per_tenant.summary
    before = snapshot(client)
    store = LocalStore(tmp_path / "backups")
    leftovers = cleanup.find_decommissioned_leftovers(client)
    cleanup.save_leftovers(store, leftovers, "half")
    for s in leftovers.scopes:  # stopped after the tokens (deleted first)
        client[s.scope.database].tokens.delete_many({"_id": {"$in": s.ids("tokens")}})
    report = cleanup.apply_cleanup(client, store, "half-rerun", log=lambda m: None)
    assert report.remaining == 0
    assert snapshot(client) == without_leftovers(before, summary)
    # both saved copies together still hold every deleted document
    first = cleanup.read_saved(store, "cleanup/half/leftovers.bson")[1]
    assert len(first) == 57


def test_backup_target_failure_deletes_nothing(tenant_field, tmp_path):
    seeded = tenant_field
    before = snapshot(seeded.client)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(UpgradeError) as err:
        cleanup.apply_cleanup(seeded.client, LocalStore(not_a_folder), "r", log=lambda m: None)
    assert "nothing was deleted" in err.value.hint
    assert snapshot(seeded.client) == before


def test_verify_catches_remaining_leftovers_and_lost_valid_documents(per_tenant):
    client, summary = per_tenant.client, per_tenant.summary
    leftovers = cleanup.find_decommissioned_leftovers(client)
    with pytest.raises(cleanup.CleanupNotVerified, match="57 leftover document"):
        cleanup.verify_cleanup(client, leftovers)
    cleanup.delete_leftovers(client, leftovers)
    tenant = summary.tenants[1]
    client[tenant.database].devices.delete_one({"_id": tenant.valid_devices[0]})  # someone else's delete
    with pytest.raises(cleanup.CleanupNotVerified) as err:
        cleanup.verify_cleanup(client, leftovers)
    assert f"{tenant.database}.devices holds 18 documents, expected 19" in err.value.message


def test_unreachable_mongo_fails_fast_naming_no_secret(tmp_path):
    from mender_upgrade.flows.cli import app
    url = f"mongodb://admin:s3cr3t@127.0.0.1:{free_port()}/"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["cleanup", "--mongo-url", url, "--apply", "--yes",
                                      "--target", f"file://{tmp_path}/backups"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed < 10
    out = " ".join(result.output.split())
    assert "does not answer" in out and "127.0.0.1" in out and "s3cr3t" not in out
    assert not (tmp_path / "backups").exists()
    assert issubclass(MongoUnreachable, TransientError)  # the task wrappers retry it


# ------------------------------------------------------------------------------------------
# CLI


def _run(*args: str, input: str | None = None):
    from mender_upgrade.flows.cli import app
    result = CliRunner().invoke(app, ["cleanup", *args], input=input)
    return result, " ".join(result.output.split())


def test_cli_dry_run_apply_and_restore(per_tenant, tmp_path):
    client, summary = per_tenant.client, per_tenant.summary
    before = snapshot(client)
    target = f"file://{tmp_path}/backups"

    result, out = _run("--mongo-url", per_tenant.url)
    assert result.exit_code == 0, result.output
    assert "per-tenant-databases" in out and "(default)" in out
    assert "dry run: 57 leftover document(s); nothing was changed" in out
    assert f"warning: {summary.inventory_old_clients} of" in out and "older than 1.7.1" in out
    assert snapshot(client) == before

    result, out = _run("--mongo-url", per_tenant.url, "--apply", "--target", target, input="n\n")
    assert result.exit_code == 3 and "not confirmed: nothing was changed" in out
    assert snapshot(client) == before

    result, out = _run("--mongo-url", per_tenant.url, "--apply", "--yes", "--target", target, "--run-id", "cli")
    assert result.exit_code == 0, result.output
    assert "verified: 0 leftovers remain, 57 document(s) deleted" in out
    # Under this host's namespace (no host_id configured: the machine's host name), never the target's root.
    saved = tmp_path / "backups" / socket.gethostname() / "cleanup" / "cli" / "leftovers.bson"
    assert not (tmp_path / "backups" / "cleanup").exists()
    assert f"sha256 {hashlib.sha256(saved.read_bytes()).hexdigest()}" in out
    assert snapshot(client) == without_leftovers(before, summary)

    result, out = _run("--mongo-url", per_tenant.url, "--apply", "--yes", "--target", target)
    assert result.exit_code == 0 and "nothing to delete" in out

    result, out = _run("--mongo-url", per_tenant.url, "--restore", str(saved))
    assert result.exit_code == 0, result.output
    assert "restored 57 document(s)" in out
    assert snapshot(client) == before

    result, out = _run("--mongo-url", per_tenant.url, "--restore", "cleanup/cli/leftovers.bson",
                       "--target", target)
    assert result.exit_code == 0 and "restored 0 document(s)" in out

    result, out = _run("--mongo-url", per_tenant.url, "--tenant", "nope")
    assert result.exit_code == 1 and "tenant 'nope' has no deviceauth data" in out
    result, out = _run("--mongo-url", per_tenant.url, "--apply", "--restore", str(saved))
    assert result.exit_code == 2 and "exclude each other" in out


# ------------------------------------------------------------------------------------------
# Prefect wrappers (thin): the retry rule


class _State:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    def result(self):
        if self.exc:
            raise self.exc
        return None


def test_task_wrappers_retry_only_transient_errors():
    assert retry_on_transient(None, None, _State(MongoUnreachable("down", "")))
    assert not retry_on_transient(None, None, _State(cleanup.CleanupScopeNotFound("no", "")))
    assert not retry_on_transient(None, None, _State(cleanup.CleanupNotVerified("no", "")))
    assert not retry_on_transient(None, None, _State(ValueError("bug")))
    assert not retry_on_transient(None, None, _State(None))
    for t in (steps.find_leftovers_task, steps.cleanup_task, steps.old_clients_task, steps.undo_cleanup_task):
        assert t.retries == 3 and t.retry_condition_fn is retry_on_transient
