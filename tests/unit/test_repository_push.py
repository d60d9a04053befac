"""Pushing the production branch and its pre-upgrade tags to the operator's company remote:
real clones of the fixture repository, a bare repository in tmp_path as the remote (no network)."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

import sandbox.integration_fixture as fx
from tasks import repository as r


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.create_upstream(tmp_path_factory.mktemp("upstream") / "integration.git")


@pytest.fixture
def upgraded(upstream: Path, tmp_path: Path) -> git.Repo:
    """An operator clone upgraded 2.6.4 -> 3.0.0 (one pre-upgrade tag), with remote `company`
    (an empty bare repository) and a failed-upgrade tag left by an earlier attempt."""
    repo = git.Repo(fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4"))
    r.merge_tag(repo, "3.0.0", base="2.6.4")
    repo.git.tag("-a", "failed-upgrade/2.6.4-to-3.0.0-20260101T000000Z", "-m", "failed attempt", "HEAD")
    git.Repo.init(tmp_path / "company.git", bare=True)
    repo.create_remote("company", str(tmp_path / "company.git"))
    return repo


def remote_refs(path: Path) -> dict[str, str]:
    out = git.Repo(path).git.for_each_ref("--format=%(refname) %(objectname)")
    return dict(line.split() for line in out.splitlines())


def test_push_sends_the_branch_and_pre_upgrade_tags_only_and_is_idempotent(upgraded: git.Repo, tmp_path: Path) -> None:
    pre_upgrade = upgraded.git.tag("--list", "pre-upgrade/*").split()
    assert len(pre_upgrade) == 1
    pushed = r.push_to_company_remote(Path(upgraded.working_tree_dir), "company")
    assert pushed == ["refs/heads/production", f"refs/tags/{pre_upgrade[0]}"]
    refs = remote_refs(tmp_path / "company.git")
    assert set(refs) == set(pushed)  # no failed-upgrade/ tag, no release tags
    assert refs["refs/heads/production"] == upgraded.head.commit.hexsha
    assert refs[f"refs/tags/{pre_upgrade[0]}"] == upgraded.tags[pre_upgrade[0]].tag.hexsha  # the annotated tag
    assert r.push_to_company_remote(Path(upgraded.working_tree_dir), "company") == []


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
    upgraded.git.tag("-a", "pre-upgrade/3.0.0-to-3.0.2-20260102T000000Z", "-m", "next hop", "HEAD~1")

    with pytest.raises(r.PushRejected) as err:
        r.push_to_company_remote(root, "company")
    assert "refs/heads/production" in err.value.message and "nothing was pushed" in err.value.message
    assert "never force-push" in err.value.hint
    assert remote_refs(tmp_path / "company.git") == before  # --atomic: the new tag did not go either


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
