"""The repository part of an upgrade on real clones of the fixture repository (no git mocks).

One upstream per module (fast to build), one operator clone per test. `./run config -q` runs
for real in the tests that say so: it needs docker-compose and a reachable Docker daemon.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

import mender_upgrade.sandbox.integration_fixture as fx
from mender_upgrade.flows.cli import app
from mender_upgrade.tasks import repository as r
from mender_upgrade.tasks.errors import ComposeCommandFailed

PROD = r.PROD_YML
HOSTILE = ["3.0.0; rm -rf /", "../x", "--upload-pack=x", "", "2.7", " 2.7.2", "2.7.2\n", "refs/tags/2.7.2",
           "2.7.2 --exec=x", "$(id)"]
needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.create_upstream(tmp_path_factory.mktemp("upstream") / "integration.git")


def clone(upstream: Path, tmp_path: Path, version: str, enterprise: bool = False) -> git.Repo:
    return r.open_integration(fx.create_operator_clone(upstream, tmp_path / "mender", version, enterprise=enterprise))


def sh(repo: git.Repo, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=repo.working_tree_dir, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(result.stderr)
    return result.stdout


def commit_edit(repo: git.Repo, path: str, edit, message: str = "ops: local edit") -> None:
    file = Path(repo.working_tree_dir) / path
    if edit is None:
        file.unlink()
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(edit(file.read_text() if file.exists() else ""))
    sh(repo, "add", "-A", "--", path)
    sh(repo, "commit", "-q", "-m", message)


def snapshot(repo: git.Repo) -> dict[str, object]:
    """Everything an aborted operation must leave as it was: files, index, HEAD, refs, worktrees."""
    root = Path(repo.working_tree_dir)
    git_dir = Path(repo.git_dir)
    files = {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in sorted(root.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(root).parts}
    return {"files": files, "index": (git_dir / "index").read_bytes(), "HEAD": (git_dir / "HEAD").read_bytes(),
            "refs": sh(repo, "for-each-ref"), "worktrees": sh(repo, "worktree", "list", "--porcelain")}


def upstream_files_equal(repo: git.Repo, tag: str) -> list[str]:
    """Paths where HEAD differs from `tag` (only the operator's own files may)."""
    return sh(repo, "diff", "--name-only", tag, "HEAD").split()


def operator_files(version: str) -> set[str]:
    return {PROD} | {f"production/keys-generated/{p}" for p in fx.keygen_files(version)}


def no_check(root: Path) -> None:
    """Stands in for `./run config -q` where a test is about git, not compose."""


# --- validation and preconditions ------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_versions_are_refused_before_git(upstream: Path, tmp_path: Path, text: str) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    before = snapshot(repo)
    with pytest.raises(r.InvalidRef, match="not a release version"):
        r.merge_tag(repo, text)
    with pytest.raises(r.InvalidRef):
        r.review_hop(repo, "2.6.4", text)
    assert snapshot(repo) == before


@pytest.mark.parametrize("name", ["--upload-pack=x", "../x", "a..b", "x.lock", "HEAD@{1}", "a b", "-"])
def test_hostile_branch_names_are_refused(upstream: Path, tmp_path: Path, name: str) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    with pytest.raises(r.InvalidRef, match="not an acceptable branch name"):
        r.check_preconditions(repo, name)


def test_preconditions_each_say_what_is_wrong(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    r.check_preconditions(repo)
    root = Path(repo.working_tree_dir)
    (root / "production/db-dump").mkdir()
    (root / "production/db-dump/x.bson").write_text("x")
    with pytest.raises(r.DirtyWorkTree, match="production/db-dump/"):
        r.check_preconditions(repo)
    shutil.rmtree(root / "production/db-dump")
    (root / PROD).write_text((root / PROD).read_text() + "# edited\n")
    with pytest.raises(r.DirtyWorkTree, match=PROD):
        r.check_preconditions(repo)
    sh(repo, "checkout", "-q", "--", PROD)
    sh(repo, "checkout", "-q", "--detach")
    with pytest.raises(r.NotOnProductionBranch, match="detached"):
        r.check_preconditions(repo)
    sh(repo, "checkout", "-q", "-b", "other")
    with pytest.raises(r.NotOnProductionBranch, match="'other', not 'production'"):
        r.check_preconditions(repo)
    r.check_preconditions(repo, "other")
    sh(repo, "rm", "-q", "--cached", PROD)
    sh(repo, "commit", "-q", "-m", "untrack")
    (root / ".git/info/exclude").write_text("production/config/prod.yml\n")
    with pytest.raises(r.ProdYmlNotTracked, match="not committed"):
        r.check_preconditions(repo, "other")


def test_old_21_layout_gets_its_own_hint(upstream: Path, tmp_path: Path) -> None:
    """<=2.1: the operator copied template/ to an untracked production/ with prod.yml in it."""
    repo = clone(upstream, tmp_path, "2.6.4")
    sh(repo, "rm", "-q", "--cached", PROD)
    sh(repo, "commit", "-q", "-m", "<= 2.1 layout")
    root = Path(repo.working_tree_dir)
    (root / PROD).rename(root / "production/prod.yml")
    with pytest.raises(r.ProdYmlNotTracked, match="<=2.1 production/prod.yml layout"):
        r.check_preconditions(repo)


def test_not_a_clone_and_not_the_root(tmp_path: Path, upstream: Path) -> None:
    with pytest.raises(r.NotAnIntegrationClone, match="not a git clone"):
        r.open_integration(tmp_path)
    repo = clone(upstream, tmp_path, "2.6.4")
    with pytest.raises(r.NotAnIntegrationClone, match="not the root"):
        r.open_integration(Path(repo.working_tree_dir) / "production")


def test_unreachable_origin_is_transient(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    sh(repo, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    with pytest.raises(r.OriginUnreachable, match="did not answer `git fetch --tags`"):
        r.fetch_tags(repo)
    sh(repo, "remote", "remove", "origin")
    with pytest.raises(r.OriginUnreachable, match="no remote 'origin'"):
        r.fetch_tags(repo)


def test_current_version_ignores_non_release_tags(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.2")
    for tag in ("2.6.9b1", "2.6.9-build1", "saas-v2099.01.01", "internal-9"):
        sh(repo, "tag", tag)
    assert r.current_version(repo) == "2.6.2"
    assert sh(repo, "describe", "--tags", "--abbrev=0").strip() != "2.6.2"  # what describe alone would say


# --- planning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,target,hops,enterprise", [
    ("2.6.4", None, ["2.7.2", "3.0.2", "3.1.1", "3.2.2", "3.3.2", "3.6.5", "3.7.11"], False),
    ("2.6.1", "2.6.4", ["2.6.4"], True),
    ("3.3.2", "3.6.5", ["3.6.5"], False),
])
def test_plan_on_clones(upstream: Path, tmp_path: Path, version: str, target: str | None, hops: list[str],
                        enterprise: bool) -> None:
    plan = r.plan_upgrade(clone(upstream, tmp_path, version, enterprise), target)
    assert (plan.current, plan.hops, plan.enterprise, plan.refused) == (version, hops, enterprise, None)


def test_plan_warns_about_locally_edited_upstream_files(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    commit_edit(repo, "docker-compose.yml", lambda t: t + "# ops\n")
    plan = r.plan_upgrade(repo, "2.7.2")
    assert any("docker-compose.yml" in w for w in plan.warnings)


# --- the hop merge -----------------------------------------------------------------------------------


def test_merge_lands_where_plain_git_merge_conflicts(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    head = repo.head.commit.hexsha
    assert subprocess.run(["git", "merge-tree", "--write-tree", "HEAD", "2.7.2"], cwd=repo.working_tree_dir,
                          capture_output=True).returncode == 1  # the docs' merge conflicts
    result = r.merge_tag(repo, "2.7.2")
    merge = repo.head.commit
    assert [p.hexsha for p in merge.parents] == [head, repo.commit("2.7.2").hexsha]
    assert set(upstream_files_equal(repo, "2.7.2")) == operator_files("2.6.4")
    assert "storage-proxy/nginx.conf" not in sh(repo, "ls-files")  # upstream deletions land too
    assert sh(repo, "status", "--porcelain") == ""
    assert result.pre_upgrade_marker.startswith("pre-upgrade/2.6.4-to-2.7.2-")
    assert repo.commit(r.marker_ref(result.pre_upgrade_marker)).hexsha == head
    assert sh(repo, "tag", "--list", "pre-upgrade/*") == ""  # a marker, not a tag
    assert r.current_version(repo) == "2.7.2"
    assert merge.message.startswith("Merge tag '2.7.2' into production")
    assert (repo.head.commit.tree / "production/run").mode == 0o100755


def test_operator_edits_are_kept_or_merged(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    commit_edit(repo, "README.md", lambda t: t + "\nops: our install notes\n")          # upstream: unchanged
    commit_edit(repo, "docker-compose.yml", lambda t: "# ops: pinned by us\n" + t)     # upstream: other lines
    commit_edit(repo, "production/backup.sh", lambda t: "#!/bin/sh\necho backup\n")    # added locally
    result = r.merge_tag(repo, "2.7.2")
    root = Path(repo.working_tree_dir)
    assert (root / "README.md").read_text().endswith("ops: our install notes\n")
    compose = (root / "docker-compose.yml").read_text()
    assert compose.startswith("# ops: pinned by us\n") and "traefik:v2.4" in compose
    assert result.merged_files == ["docker-compose.yml"]
    assert (root / "production/backup.sh").is_file()
    assert set(upstream_files_equal(repo, "2.7.2")) == operator_files("2.6.4") | {
        "README.md", "docker-compose.yml", "production/backup.sh"}


@pytest.mark.parametrize("path,edit,cause", [
    ("docker-compose.yml", lambda t: t.replace("mender-2.6.4", "mender-2.6.4-ops"), "changed the same lines"),
    ("storage-proxy/nginx.conf", lambda t: t.replace("1024", "4096"), "deleted in 2.7.2"),
    ("verify-docker-versions", None, "deleted on this branch"),
    ("migration/dump-db", lambda t: "#!/bin/sh\nmy own dump\n", "added on this branch and in 2.7.2"),
])
def test_conflict_restores_the_exact_prior_state(upstream: Path, tmp_path: Path, path: str, edit, cause: str) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    commit_edit(repo, path, edit)
    before = snapshot(repo)
    with pytest.raises(r.MergeConflict) as caught:
        r.merge_tag(repo, "2.7.2")
    assert caught.value.paths == [path]
    assert cause in str(caught.value) and "edited locally" in caught.value.hint
    assert snapshot(repo) == before  # files, index bytes, HEAD, refs (no pre-upgrade marker), worktrees


def test_patch_merge_and_already_merged(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.1")
    r.merge_tag(repo, "2.6.4")
    assert set(upstream_files_equal(repo, "2.6.4")) == operator_files("2.6.1")
    head = repo.head.commit.hexsha
    again = r.merge_tag(repo, "2.6.4", base="2.6.4")
    assert (again.commit, again.pre_upgrade_marker, repo.head.commit.hexsha) == (head, None, head)


# --- review material ---------------------------------------------------------------------------------


def test_review_of_the_27_hop(upstream: Path, tmp_path: Path) -> None:
    review = r.review_hop(clone(upstream, tmp_path, "2.6.4"), "2.6.4", "2.7.2")
    assert "Replace the nginx API gateway and the storage-proxy with Traefik" in " ".join(review.log)
    assert "Bump versions for Mender 2.7.2" in review.log[0]
    assert "diff --git a/production/config/prod.yml.template" in review.diff
    assert "diff --git a/docker-compose.yml" in review.diff and "a/.gitlab-ci.yml" not in review.diff
    assert review.removed_services == ["mender-deviceconnect", "storage-proxy"]
    statuses = {c.key: c.status for c in review.drift[PROD]}
    assert statuses["services.storage-proxy"] == "removed-service"
    assert statuses["services.mender-api-gateway.volumes"] == "carried"  # ./tls.toml comes with 2.7.2
    json.dumps(review.to_dict())


def test_review_of_30_config_diff_and_31_missing_certificates(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "3.0.2")
    assert "diff --git a/config/traefik/traefik.tls.yaml" in r.review_hop(repo, "2.7.2", "3.0.2").diff
    drift = r.review_hop(repo, "3.0.2", "3.1.1").drift[PROD]
    assert {c.status for c in drift} == {"missing-file"}


# --- hops with the configuration ---------------------------------------------------------------------


@needs_compose
def test_two_hops_through_27_with_real_config_check(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    results = r.update_repository(repo, ["2.7.2", "3.0.2"])
    assert [h.to_version for h in results] == ["2.7.2", "3.0.2"]
    assert set(upstream_files_equal(repo, "3.0.2")) == operator_files("2.6.4")
    prod = yaml.safe_load((Path(repo.working_tree_dir) / PROD).read_text())
    gateway = prod["services"]["mender-api-gateway"]
    assert "storage-proxy" not in prod["services"] and "command" not in gateway  # 3.0: file provider
    assert gateway["networks"]["mender"]["aliases"] == [fx.OPERATOR_STORAGE_HOST]
    subjects = sh(repo, "log", "--first-parent", "--format=%s", "-6").splitlines()
    assert subjects[:5] == [
        "production: carry template changes 2.7.2 -> 3.0.2 into the configuration",
        "Merge tag '3.0.2' into production",
        "production: carry template changes 2.6.4 -> 2.7.2 into the configuration",
        "production: storage alias for Mender 2.7.2's gateway (prod.yml)",
        "Merge tag '2.7.2' into production"]
    alias_commit = sh(repo, "log", "--format=%B", "-1", results[0].config.commits[0])
    assert "removes storage-proxy" in alias_commit and "without :9000" in alias_commit
    assert len(r.markers(repo, r.PRE_UPGRADE_PREFIX)) == 2
    assert sh(repo, "describe", "--tags", "--abbrev=0").strip() == "3.0.2"  # what ./run exports as INTEGRATION_VERSION
    assert not any("INTEGRATION_VERSION" in w for w in results[-1].warnings)
    assert sh(repo, "status", "--porcelain") == ""


@needs_compose
@pytest.mark.parametrize("version,hops,enterprise", [
    ("2.6.4", ["2.7.2"], True),   # enterprise: deviceconnect's override goes with connect.yml
    ("3.4.0", ["3.5.1", "3.6.5"], False),  # reporting + OpenSearch come and go
    ("3.3.2", ["3.6.5", "3.7.11"], True),  # the documented shortcut, then mongo 5.0
])
def test_eras_pass_run_config(upstream: Path, tmp_path: Path, version: str, hops: list[str], enterprise: bool) -> None:
    repo = clone(upstream, tmp_path, version, enterprise)
    r.update_repository(repo, hops)
    assert set(upstream_files_equal(repo, hops[-1])) <= operator_files(version) | {r.ENTERPRISE_YML}
    services = yaml.safe_load((Path(repo.working_tree_dir) / PROD).read_text())["services"]
    assert not {"storage-proxy", "mender-reporting", "mender-opensearch"} & set(services)


def test_failed_check_rolls_the_hop_back(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    r.update_repository(repo, ["2.7.2"], check=no_check)
    landed = repo.head.commit.hexsha

    def failing(root: Path) -> None:
        raise ComposeCommandFailed("`./run config -q` failed (exit 1)", "run it by hand")

    with pytest.raises(r.HopFailed, match="hop 2.7.2 -> 3.0.2 failed") as caught:
        r.update_repository(repo, ["3.0.2"], check=failing)
    assert "back at refs/mender-upgrade/pre-upgrade/2.7.2-to-3.0.2-" in caught.value.hint
    assert repo.head.commit.hexsha == landed and sh(repo, "status", "--porcelain") == ""


def test_dry_run_leaves_the_clone_byte_identical(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    before = snapshot(repo)
    results = r.dry_run(repo, ["2.7.2", "3.0.2"], check=no_check)
    assert [h.merge.pre_upgrade_marker for h in results] == [None, None]
    assert results[0].config.storage_alias == fx.OPERATOR_STORAGE_HOST
    assert snapshot(repo) == before
    commit_edit(repo, "docker-compose.yml", lambda t: t.replace("mender-2.6.4", "mender-2.6.4-ops"))
    before = snapshot(repo)
    with pytest.raises(r.MergeConflict, match="docker-compose.yml"):
        r.dry_run(repo, ["2.7.2"], check=no_check)
    assert snapshot(repo) == before


# --- the CLI -----------------------------------------------------------------------------------------


def run_cli(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_cli_plan_exit_codes_and_json(upstream: Path, tmp_path: Path) -> None:
    root = Path(clone(upstream, tmp_path, "2.6.4", enterprise=True).working_tree_dir)
    code, out = run_cli("plan", "--integration", str(root), "--to", "3.0.2", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["hops"] == ["2.7.2", "3.0.2"] and plan["target"] == "3.0.2"
    assert plan["enterprise"] is True and plan["alias_patch"] is True
    assert plan["mongo_major_change"] is None and plan["refused"] is None and isinstance(plan["warnings"], list)
    for target, words in (("3.8.5", "past the docker-compose production line"), ("2.5.1", "downgrades"),
                          ("2.9.9", "not a tag"), ("--upload-pack=x", "not a stable release tag")):
        code, out = run_cli("plan", "--integration", str(root), f"--to={target}", "--json")
        assert code == 3 and words in json.loads(out)["refused"]
    code, out = run_cli("plan", "--integration", str(root))
    assert code == 0 and "2.6.4 -> 2.7.2 -> 3.0.2" in out
    (root / "stray.txt").write_text("x")
    code, out = run_cli("plan", "--integration", str(root))
    assert code == 1 and "untracked" in out and "stray.txt" in out


@needs_compose
def test_cli_repo_update(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    root = repo.working_tree_dir
    before = snapshot(repo)
    code, out = run_cli("repo-update", "--integration", root, "--to", "2.7.2", "--dry-run")
    assert code == 0 and "would merge 2.7.2" in out and "template drift" in out
    assert snapshot(repo) == before
    code, out = run_cli("repo-update", "--integration", root, "--to", "2.7.2", input="n\n")
    assert code == 3 and "not confirmed" in out and snapshot(repo) == before
    code, out = run_cli("repo-update", "--integration", root, "--to", "2.7.2", "--yes")
    assert code == 0 and "merged 2.7.2" in out and "undo: git reset --hard refs/mender-upgrade/pre-upgrade/2.6.4-to-2.7.2-" in out
    assert r.current_version(repo) == "2.7.2"
    code, out = run_cli("repo-update", "--integration", root, "--to", "2.6.4", "--yes")
    assert code == 3 and "downgrades" in out


def test_cli_repo_update_conflict_names_the_files(upstream: Path, tmp_path: Path) -> None:
    repo = clone(upstream, tmp_path, "2.6.4")
    commit_edit(repo, "docker-compose.yml", lambda t: t.replace("mender-2.6.4", "mender-2.6.4-ops"))
    before = snapshot(repo)
    code, out = run_cli("repo-update", "--integration", repo.working_tree_dir, "--to", "2.7.2", "--yes")
    assert code == 1 and "conflicts in 1 file" in out and "docker-compose.yml" in out
    assert snapshot(repo) == before
