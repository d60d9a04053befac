"""Checks before anything changes: each one says what it found and what to do if it failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import git

from mender_upgrade.tasks import mongo as mongo_mod
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.redaction import scrub, untrusted_environment
from mender_upgrade.tasks.mongo_upgrade import cpu_has_avx
from mender_upgrade.tasks.store import BackupStore
from mender_upgrade.tasks.versions import UpgradePlan


class PreflightFailed(UpgradeError):
    """At least one pre-flight check failed; nothing was changed."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _target_verify_script(integration: Path, tag: str) -> Check:
    """Run the *target* release's verify-docker-versions against this host's compose."""
    try:
        script = git.Repo(integration).git.show(f"refs/tags/{tag}:verify-docker-versions")
    except git.GitCommandError:
        return Check("compose accepted by target", True, f"{tag} has no verify-docker-versions")
    with tempfile.NamedTemporaryFile("w", suffix="-verify-docker-versions", delete=False) as f:
        f.write(script + "\n")
    try:
        # The target release's script, run before anyone approved that release: no secret of ours.
        proc = subprocess.run(["bash", f.name], capture_output=True, text=True, timeout=60,
                              env=untrusted_environment(dict(os.environ)))
    finally:
        Path(f.name).unlink()
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return Check("compose accepted by target", proc.returncode == 0,
                 f"{tag}'s verify-docker-versions: " + (scrub(out[-1]) if out else f"exit {proc.returncode}"))


def run_preflight(client: docker.DockerClient, integration: Path, store: BackupStore, plan: UpgradePlan,
                  project: str, min_free_gib: float = 2.0) -> list[Check]:
    checks: list[Check] = []
    try:
        checks.append(Check("docker", True, f"engine {client.version()['Version']}"))
    except docker.errors.DockerException as exc:
        checks.append(Check("docker", False, f"engine unreachable: {exc.__class__.__name__}"))
    compose = shutil.which("docker-compose")
    checks.append(Check("compose", compose is not None or shutil.which("docker") is not None,
                        compose or "docker compose plugin"))
    if plan.hops:
        checks.append(_target_verify_script(integration, plan.hops[-1]))
    free = shutil.disk_usage(integration).free / 2**30
    checks.append(Check("disk space", free >= min_free_gib, f"{free:.1f} GiB free next to the clone (need {min_free_gib})"))
    try:
        store.probe()
        checks.append(Check("backup target", True, f"{store.uri} accepts write, read and delete"))
    except UpgradeError as exc:
        checks.append(Check("backup target", False, exc.message))
    try:
        mongo_mod.connect(mongo_mod.mongo_url(client, project), timeout_ms=5000).close()
        checks.append(Check("mongo", True, "mender-mongo answers"))
    except UpgradeError as exc:
        checks.append(Check("mongo", False, exc.message))
    if plan.mongo_major_change and float(plan.mongo_major_change[1]) >= 5.0:
        checks.append(Check("AVX", cpu_has_avx(), "needed by mongo >= 5.0"))
    return checks


def require_all(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise PreflightFailed("pre-flight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed),
                              "fix the failing checks; nothing was changed")
