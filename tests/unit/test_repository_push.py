"""The tool's markers (refs/mender-upgrade/...) and pushing the production branch with its
pre-upgrade markers to the operator's company remote: real clones of the fixture repository, a
bare repository in tmp_path as the remote (no network)."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

import mender_upgrade.sandbox.integration_fixture as fx
from mender_upgrade.tasks import repository as r
from mender_upgrade.tasks import rollback


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.create_upstream(tmp_path_factory.mktemp("upstream") / "integration.git")


@pytest.fixture
def upgraded(upstream: Path, tmp_path: Path) -> git.Repo:
    """An operator clone upgraded 2.6.4 -> 3.0.0 (one pre-upgrade marker), with remote `company`
    (an empty bare repository) and a failed-upgrade *tag* left by an earlier attempt of an older
    version of the tool (in refs/tags/, as it used to)."""
    repo = git.Repo(fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4"))
    r.merge_tag(repo, "3.0.0", base="2.6.4")
    repo.git.tag("-a", "failed-upgrade/2.6.4-to-3.0.0-20260101T000000Z", "-m", "failed attempt", "HEAD")
    git.Repo.init(tmp_path / "company.git", bare=True)
    repo.create_remote("company", str(tmp_path / "company.git"))
    return repo


def remote_refs(path: Path) -> dict[str, str]:
    out = git.Repo(path).git.for_each_ref("--format=%(refname) %(objectname)")
    return dict(line.split() for line in out.splitlines())


def test_push_sends_the_branch_and_pre_upgrade_markers_only_and_is_idempotent(upgraded: git.Repo,
                                                                                tmp_path: Path) -> None:
    pre_upgrade = list(r.markers(upgraded, r.PRE_UPGRADE_PREFIX))
    assert len(pre_upgrade) == 1 and upgraded.git.tag("--list", "pre-upgrade/*") == ""
    marker = r.marker_ref(pre_upgrade[0])
    pushed = r.push_to_company_remote(Path(upgraded.working_tree_dir), "company")
    assert pushed == ["refs/heads/production", marker]
    refs = remote_refs(tmp_path / "company.git")
    assert set(refs) == set(pushed)  # no failed-upgrade marker, no tags at all
    assert refs["refs/heads/production"] == upgraded.head.commit.hexsha
    assert refs[marker] == upgraded.git.rev_parse(marker)  # the annotated marker object itself
    assert git.Repo(tmp_path / "company.git").git.cat_file("-t", marker) == "tag"
    assert r.push_to_company_remote(Path(upgraded.working_tree_dir), "company") == []
    # the push moved the old tool's failed-upgrade tag out of refs/tags/ and kept it local
    assert upgraded.git.tag("--list", "failed-upgrade/*") == ""
    assert list(r.markers(upgraded, r.FAILED_PREFIX)) == ["failed-upgrade/2.6.4-to-3.0.0-20260101T000000Z"]


def test_marker_tags_of_an_existing_clone_move_out_of_refs_tags_once(upstream: Path, tmp_path: Path) -> None:
    """A clone an older version of the tool upgraded 3.0.0 -> 3.0.2 has its marker tags in
    refs/tags/, and `git describe` names one of them; the migration moves the same tag objects
    under refs/mender-upgrade/, and describe names the release again."""
    repo = git.Repo(fx.create_operator_clone(upstream, tmp_path / "mender", "3.0.0"))
    before = repo.head.commit.hexsha
    r.merge_tag(repo, "3.0.2", base="3.0.0")
    marker = next(iter(r.markers(repo, r.PRE_UPGRADE_PREFIX)))
    old_style = {"pre-upgrade/3.0.0-to-3.0.2-20250101T000000Z": before,
                 "failed-upgrade/3.0.0-to-3.0.2-20250101T000000Z": "HEAD"}
    for name, commit in old_style.items():
        repo.git.tag("-a", name, "-m", "made by an older mender-upgrade", commit)
    objects = {name: repo.git.rev_parse(f"refs/tags/{name}") for name in old_style}
    assert repo.git.describe("--tags", "--abbrev=0") != "3.0.2"  # the bug: a marker tag wins
    assert sorted(r.migrate_marker_tags(repo)) == sorted(old_style)
    assert repo.git.tag("--list", "*-upgrade/*") == ""
    assert {name: repo.git.rev_parse(r.marker_ref(name)) for name in old_style} == objects
    assert repo.git.describe("--tags", "--abbrev=0") == "3.0.2"
    assert set(r.markers(repo, "")) == {*old_style, marker}
    assert r.migrate_marker_tags(repo) == []  # idempotent


def test_a_tag_whose_marker_name_is_taken_stays(upgraded: git.Repo) -> None:
    name = next(iter(r.markers(upgraded, r.PRE_UPGRADE_PREFIX)))
    upgraded.git.tag(name, "HEAD")  # same name, other object
    assert "failed-upgrade/2.6.4-to-3.0.0-20260101T000000Z" in r.migrate_marker_tags(upgraded)
    assert upgraded.git.tag("--list", "pre-upgrade/*") == name


def test_describe_names_the_running_release_after_a_patch_hop_and_after_a_rollback(upstream: Path,
                                                                                  tmp_path: Path) -> None:
    """production/run exports `git describe --tags --abbrev=0` as INTEGRATION_VERSION."""
    root = fx.create_operator_clone(upstream, tmp_path / "mender", "3.0.0")
    repo = git.Repo(root)
    result = r.upgrade_hop(repo, "3.0.0", "3.0.2", check=lambda path: None)
    assert repo.git.describe("--tags", "--abbrev=0") == "3.0.2" and not result.warnings
    attempt = repo.head.commit.hexsha
    failed = rollback.mark_failed_attempt(root, result.merge.pre_upgrade_marker)  # as roll_back does
    rollback.reset_branch(root, result.merge.pre_upgrade_marker)
    assert repo.git.describe("--tags", "--abbrev=0") == "3.0.0"
    assert r.markers(repo, r.FAILED_PREFIX) == {failed: attempt}
    assert repo.git.tag("--list", "*-upgrade/*") == ""


def test_a_remote_that_moved_on_is_never_overwritten_and_gets_nothing(upgraded: git.Repo, tmp_path: Path) -> None:
    root = Path(upgraded.working_tree_dir)
    r.push_to_company_remote(root, "company")
    other = git.Repo.clone_from(str(tmp_path / "company.git"), str(tmp_path / "other-host"), branch="production")
    (Path(other.working_tree_dir) / "NOTE").write_text("another host's commit\n")
    other.index.add(["NOTE"])
    other.index.commit("another host")
    other.git.push("origin", "production")
    before = remote_refs(tmp_path / "company.git")
    upgraded.git.commit("--allow-empty", "-q", "-m", "local change")
    r.create_marker(upgraded, "pre-upgrade/3.0.0-to-3.0.2-20260102T000000Z", upgraded.git.rev_parse("HEAD~1"),
                    "next hop")

    with pytest.raises(r.PushRejected) as err:
        r.push_to_company_remote(root, "company")
    assert "refs/heads/production" in err.value.message and "nothing was pushed" in err.value.message
    assert "never force-push" in err.value.hint
    assert remote_refs(tmp_path / "company.git") == before  # --atomic: the new marker did not go either


def test_a_missing_or_unreachable_remote_is_named(upgraded: git.Repo, tmp_path: Path) -> None:
    root = Path(upgraded.working_tree_dir)
    with pytest.raises(r.RemoteMissing) as err:
        r.push_to_company_remote(root, "backup")
    assert "no remote 'backup'" in err.value.message and "git remote add backup" in err.value.hint
    upgraded.create_remote("gone", str(tmp_path / "no-such.git"))
    with pytest.raises(r.RemoteUnreachable, match="git push gone"):
        r.push_to_company_remote(root, "gone")
    with pytest.raises(r.InvalidRef, match="no branch 'release'"):
        r.push_to_company_remote(root, "company", branch="release")


@pytest.mark.parametrize("name", ["-x", "--upload-pack=x", "--mirror", ".x", "a..b", "a.", "../x", "a/b",
                                  "https://evil.example/x.git", "a b", "", "company\n", "$(id)", "x" * 65])
def test_hostile_remote_names_are_refused_before_git(tmp_path: Path, name: str) -> None:
    with pytest.raises(r.InvalidRef, match="not an acceptable remote name"):
        r.push_to_company_remote(tmp_path / "not-even-a-clone", name)


def test_a_failed_push_to_a_url_with_credentials_never_quotes_them(upgraded: git.Repo, tmp_path: Path) -> None:
    from tests.ports import free_port
    root = Path(upgraded.working_tree_dir)
    upgraded.create_remote("tokened", f"http://deploy:s3cr3t-push-token@127.0.0.1:{free_port()}/integration.git")
    with pytest.raises(r.RemoteUnreachable) as err:  # nothing listens there
        r.push_to_company_remote(root, "tokened")
    said = f"{err.value.message}\n{err.value.hint}"
    assert "git push tokened" in said and "s3cr3t-push-token" not in said
