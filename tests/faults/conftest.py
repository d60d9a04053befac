"""The fault matrix: each test injects one fault or bad input, then asserts the five invariants.

It runs on the real `mendersoftware/integration` files at 2.6.4 (the operator's clone, its own
`./run`, a stand-in under every image name the compose files name), upgrading to 2.7.2 across
the storage-proxy alias change; the rollback cases' release that runs but does not serve is the
real 2.7.2 tagged in the clone with a deployments image whose migration never ends.

Every test is marked `fault(case=..., injected=...)` and tells the `fault` fixture what the tool
did; a hook records case, injection, reaction and whether every invariant held (the test
passed) into `.sandbox/reliability/results.json` and a markdown table beside it, from which
`python -m tests.faults.table` writes the README's reliability section.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import git
import pytest

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.standin_catalogue import compose_images
from mender_upgrade.tasks.backup import ensure_verified_backup, list_backups, newest_verified_backup
from mender_upgrade.tasks.containers import compose_services, project_states, run_compose, wait_until_healthy
from mender_upgrade.tasks.repository import FAILED_PREFIX, PRE_UPGRADE_PREFIX, markers
from mender_upgrade.tasks.restore import check_archives
from mender_upgrade.tasks.settings import BackupSettings, UpgradeSettings, load_settings
from mender_upgrade.tasks.store import BackupStore
from mender_upgrade.tasks.versions import STABLE_TAG
from mender_upgrade.tasks.volumes import HELPER_LABEL
from tests.conftest import BASE_VERSION
from tests.realfiles import REAL_UPSTREAM, UPSTREAM_ENV
from tests.sandbox.conftest import mongo_snapshot

RESULTS = Path(__file__).resolve().parents[2] / ".sandbox" / "reliability"
_rows: dict[str, dict] = {}
SEEN_TEXT: list[str] = []  # every message the tool showed in CLI cases, for the secret scan


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault(case, injected): one row of the fault matrix")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("fault")
    if marker is None or (report.when != "call" and report.passed):
        return
    row = _rows.setdefault(item.nodeid, {"case": marker.kwargs["case"], "injected": marker.kwargs["injected"],
                                         "did": "", "held": "yes"})
    record = getattr(item, "fault_record", None)
    if record is not None and record.did:
        row["did"] = record.did
    if report.failed:
        row["held"] = "no"
        row["did"] = row["did"] or f"test failed in {report.when}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _rows:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = list(_rows.values())
    (RESULTS / "results.json").write_text(json.dumps(rows, indent=2))
    from tests.faults.table import markdown_table
    (RESULTS / "table.md").write_text(markdown_table(rows))


def why_of(report: str, limit: int = 260) -> str:
    """The report's "why" (it may span lines), on one line, shortened in the middle: both what
    went wrong (its start) and what the tool did about it (its end) stay readable."""
    lines = report.split("- why: ", 1)[1].splitlines()
    block = [lines[0], *_until_next_bullet(lines[1:])]
    text = " ".join(" ".join(block).split())
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]} … {text[-(limit // 2 - 2):]}"


def _until_next_bullet(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.startswith(("- ", "#", "|")) or not line.strip():
            break
        out.append(line)
    return out


@dataclass
class FaultRecord:
    did: str = ""
    run_id: str = ""  # the flow run the fault hit, when the test ran one


@pytest.fixture
def fault(request) -> FaultRecord:
    """Where a test writes what the tool did (one sentence from its report or message)."""
    record = FaultRecord()
    request.node.fault_record = record
    return record


@pytest.fixture
def sandbox(_sandbox_session, monkeypatch):
    """The real-files sandbox at 2.6.4, healthy and seeded: brought up when the session's sandbox
    is another (the fixture repository's, another release), reset (`stack.reset`: clone,
    containers, data) when a test before marked it dirty."""
    if REAL_UPSTREAM is None:
        pytest.skip(f"the fault matrix runs on the real integration files: no {UPSTREAM_ENV} and no shared bundle")
    monkeypatch.setenv(UPSTREAM_ENV, REAL_UPSTREAM)
    home = _sandbox_session.home
    state = home.read_state()
    if (not state.get("real_upstream") or state.get("enterprise") or state.get("artifacts_gib")
            or state.get("version") != BASE_VERSION or "production_head" not in state):
        return stack.up(BASE_VERSION)
    if state.get("dirty"):
        sandbox = stack.reset(home)
        # What runs is 2.6.4 again (a reset that left a newer release running would move every
        # later case's "before"): the running images are those the clone's files name.
        assert _running_images(sandbox) == compose_images(run_compose(sandbox.integration, ["config"]))
        return sandbox
    return stack.attach(home)


@dataclass
class Before:
    """The state an invariant compares with: taken before the fault is injected."""
    head: str
    branch: str
    version: str
    mongo: dict
    images: dict[str, str]  # service -> image of every running container
    dirt: dict[str, bytes] = field(default_factory=dict)  # files the test itself left changed


def take_before(sandbox, dirt: tuple[str, ...] = ()) -> Before:
    """Snapshot for the invariants; `dirt`: paths the test changed on purpose (must stay as they are)."""
    repo = git.Repo(sandbox.integration)
    with sandbox.mongo() as m:
        snapshot = mongo_snapshot(m)
    return Before(repo.head.commit.hexsha, repo.active_branch.name, sandbox.version, snapshot,
                  _running_images(sandbox), {p: (sandbox.integration / p).read_bytes() for p in dirt})


def _running_images(sandbox) -> dict[str, str]:
    return {s: st.image for s, st in project_states(sandbox.client).items()}


@contextmanager
def committed_change(sandbox, path: str, edit) -> Iterator[None]:
    """Commit `edit(text) -> text | None` (None deletes) to the clone; reset to the old HEAD after."""
    repo = git.Repo(sandbox.integration)
    head = repo.head.commit.hexsha
    target = sandbox.integration / path
    new = edit(target.read_text())
    if new is None:
        repo.index.remove([path], working_tree=True)
    else:
        target.write_text(new)
        repo.index.add([path])
    repo.index.commit(f"ops: test edit of {path}")
    try:
        yield
    finally:
        repo.git.reset("--hard", "--quiet", head)


@pytest.fixture
def baseline(sandbox) -> BackupStore:
    """A backup namespace holding a verified backup of the sandbox (made once, hot)."""
    settings = BackupSettings(target=f"s3://{sandbox.s3.bucket}/faults-baseline", endpoint_url=sandbox.s3.url,
                              access_key_id=sandbox.s3.access_key, secret_access_key=sandbox.s3.secret_key)
    store = settings.open_store("faults-baseline")
    if not [m for m in list_backups(store) if m.verified]:
        ensure_verified_backup(sandbox.client, sandbox.integration, store, mode="hot", log=lambda m: None)
    return store


def run_backups(sandbox, settings: UpgradeSettings) -> BackupStore:
    """The backup namespace of a run's host, reached directly (not through a test's fault proxy)."""
    data = settings.model_dump(mode="json")
    data["backup"] |= {"endpoint_url": sandbox.s3.url, "secret_access_key": sandbox.s3.secret_key}
    return load_settings(data).backup_store()


def assert_invariants(sandbox, before: Before, backups: BackupStore, history: str,
                      says: list[str], new_version: str | None = None, new_data: bool = False,
                      run: UpgradeSettings | None = None) -> None:
    """The five invariants of the fault matrix, after a case.

    1 healthy on the old (or `new_version`); 2 the newest verified backup the `run` made (when
    it made one; else the newest in `backups`) matches its manifest and every archive is safe
    to restore; 3 the database equals its
    state before (unless `new_data`: a completed upgrade may add); 4 the clone is on the
    production branch, clean (but for the test's own dirt), with a pre-upgrade marker at the old
    commit when anything was merged, no marker among the tags, and `git describe --tags` (what
    ./run exports as INTEGRATION_VERSION) naming the old release when that runs; 5 the history (report or message) says `says`."""
    # 1
    services = compose_services(sandbox.integration)
    wait_until_healthy(sandbox.client, services, timeout=180, stability_window=2)
    images = _running_images(sandbox)
    old = before.images
    # The new release: what its compose files name (`./run config` of the clone as it is now).
    allowed = [old] + ([compose_images(run_compose(sandbox.integration, ["config"]))] if new_version else [])
    assert images in allowed, f"running images are neither {before.version}'s nor {new_version}'s: {images}"
    helpers = sandbox.client.containers.list(all=True, filters={"label": HELPER_LABEL})
    assert not helpers, f"volume helper containers left behind: {[c.name for c in helpers]}"
    # 2
    store = run_backups(sandbox, run) if run is not None else backups
    if run is not None and not [m for m in list_backups(store) if m.verified]:
        store = backups  # the run made no backup: the one before it must still be intact
    check_archives(store, newest_verified_backup(store))
    # 3
    with sandbox.mongo() as m:
        after = mongo_snapshot(m)
    if not new_data:
        assert after == before.mongo, f"database changed: {sorted(k for k in after if after[k] != before.mongo.get(k))}"
    # 4
    repo = git.Repo(sandbox.integration)
    assert not repo.head.is_detached and repo.active_branch.name == before.branch
    dirty = {item.a_path for item in repo.index.diff(None)} | set(repo.untracked_files)
    assert dirty == set(before.dirt), f"working tree: {dirty}"
    for path, content in before.dirt.items():
        assert (sandbox.integration / path).read_bytes() == content, f"{path} was changed by the tool"
    head = repo.head.commit.hexsha
    assert not [t.name for t in repo.tags if t.name.startswith((PRE_UPGRADE_PREFIX, FAILED_PREFIX))]
    described = repo.git.describe("--tags", "--abbrev=0")
    if images == old:  # unchanged or rolled back: HEAD is the old commit
        assert described == before.version, f"./run would export INTEGRATION_VERSION={described}"
    else:  # which release tag wins after a merge depends on the history's shape (the real one: the new)
        assert STABLE_TAG.match(described), f"./run would export INTEGRATION_VERSION={described}"
    if head != before.head:
        assert before.head in markers(repo, PRE_UPGRADE_PREFIX).values(), \
            "HEAD moved but no pre-upgrade marker marks the old commit"
        assert new_version, f"HEAD moved from {before.head[:10]} to {head[:10]} though no upgrade completed"
    # 5
    for words in says:
        assert words in history, f"history does not say {words!r}:\n{history}"
