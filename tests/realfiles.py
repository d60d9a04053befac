"""Where the tests find the real `mendersoftware/integration` repository, and the synthetic
release the rollback cases need on its files."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import git
import pytest

from mender_upgrade.sandbox.real_upstream import UPSTREAM_ENV
from mender_upgrade.sandbox.releases import BROKEN_VERSION

# The shared data beside the checkout (the developers' and CI's layout: <folder>/main and <folder>/shared).
SHARED_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "mendersoftware-integration.bundle"
REAL_UPSTREAM = os.environ.get(UPSTREAM_ENV) or (str(SHARED_BUNDLE) if SHARED_BUNDLE.exists() else None)
needs_upstream = pytest.mark.skipif(REAL_UPSTREAM is None, reason=f"no {UPSTREAM_ENV} and no shared bundle")


@pytest.fixture
def real_upstream(monkeypatch) -> str:
    monkeypatch.setenv(UPSTREAM_ENV, REAL_UPSTREAM)
    return REAL_UPSTREAM


@contextmanager
def broken_release(integration: Path) -> Iterator[str]:
    """Tag `BROKEN_VERSION` in the clone while the block runs: the real 2.7.2 files with
    deployments on the stand-in whose migration never ends (process alive, no HEALTHCHECK, :8080
    never answering). The tag is the clone's only: the upstream stays as operators fetch it."""
    repo = git.Repo(integration)
    work = integration.parent / "broken-release"
    repo.git.worktree("add", "--quiet", "--detach", str(work), "2.7.2")
    try:
        compose = work / "docker-compose.yml"
        compose.write_text(compose.read_text().replace("mendersoftware/deployments:mender-2.7.2",
                                                       f"mendersoftware/deployments:mender-{BROKEN_VERSION}"))
        git.Repo(work).git.commit("--quiet", "-am", f"Bump versions for Mender {BROKEN_VERSION}")
        repo.create_tag(BROKEN_VERSION, git.Repo(work).head.commit, message=f"Mender {BROKEN_VERSION}")
    finally:
        repo.git.worktree("remove", "--force", str(work))
    try:
        yield BROKEN_VERSION
    finally:
        repo.delete_tag(repo.tags[BROKEN_VERSION])
