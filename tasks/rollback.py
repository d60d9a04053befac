"""Put the server back on the old version with its data, after a failed container cycle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import git

from mender_upgrade.tasks import mongo as mongo_mod
from mender_upgrade.tasks import repository
from mender_upgrade.tasks.backup import Manifest
from mender_upgrade.tasks.containers import (PROJECT, compose_services, run_compose, start_services, wait_for_engine,
                                             wait_until_healthy)
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.restore import pinned_objects, restore_backup
from mender_upgrade.tasks.store import BackupStore


class RollbackFailed(UpgradeError):
    """The rollback itself failed; the message says where the server was left."""


@dataclass
class RollbackReport:
    reset_to: str
    failed_marker: str
    backup_id: str
    services: list[str]


def roll_back(client: docker.DockerClient, integration: Path, store: BackupStore, manifest: Manifest,
              pre_upgrade_marker: str, *, project: str = PROJECT, health_timeout: float = 300,
              stability_window: float = 5, smoke: bool = True, log: Callable[[str], None] = print) -> RollbackReport:
    """Reset the branch to marker `pre_upgrade_marker` (the failed attempt stays marked under
    refs/mender-upgrade/failed-upgrade/), bring the old version up, restore this run's verified
    backup, pass the health gate."""
    pre_upgrade_ref = repository.marker_ref(pre_upgrade_marker)
    try:
        wait_for_engine(client)  # the failure may have been the engine itself restarting
        failed_marker = mark_failed_attempt(integration, pre_upgrade_marker)
        log(f"checking backup {manifest.backup_id} before stopping the new version")
        with pinned_objects(store, manifest) as pins:  # a backup that cannot be restored stops us here
            log("stopping the new version")
            run_compose(integration, ["stop"])
            run_compose(integration, ["rm", "-f"])
            log(f"resetting the production branch to {pre_upgrade_ref}")
            reset_branch(integration, pre_upgrade_marker)
            log("starting the old version")
            # Not a plain `./run up -d`: it waits for minio's first health check, a minute on the
            # 2.x images; the health gate below sees every service serve.
            start_services(integration, compose_services(integration), "--remove-orphans")
            mongo_mod.wait_for_mongo(mongo_mod.mongo_url(client, project))
            restore_backup(client, integration, store, manifest, host_id=store.host_id, project=project,
                           health_timeout=health_timeout, stability_window=stability_window, log=log, pins=pins)
        services = compose_services(integration)
        wait_until_healthy(client, services, project=project, timeout=health_timeout, stability_window=stability_window,
                           smoke=smoke)
    except (UpgradeError, git.GitCommandError) as exc:
        raise RollbackFailed(f"rollback to {pre_upgrade_ref} failed: {exc}",
                             f"restore by hand: `git reset --hard {pre_upgrade_ref}`, `./run up -d`, then "
                             f"`mender-upgrade restore --manifest {store.uri}/{manifest.key}`") from exc
    return RollbackReport(pre_upgrade_marker, failed_marker, manifest.backup_id, services)


def mark_failed_attempt(integration: Path, pre_upgrade_marker: str) -> str:
    """Mark HEAD (the failed attempt) `failed-upgrade/<same suffix as pre_upgrade_marker>` under
    refs/mender-upgrade/; returns the marker's name. A marker made by an earlier attempt of the
    same rollback (cut short: its process was killed, the guardian rolls back again) is kept:
    it marks the failed attempt, HEAD may already be the old commit."""
    repo = git.Repo(integration)
    failed_marker = repository.FAILED_PREFIX + pre_upgrade_marker.split("/", 1)[-1]
    if failed_marker in repository.markers(repo, repository.FAILED_PREFIX):
        return failed_marker
    repository.create_marker(repo, failed_marker, repo.head.commit.hexsha,
                             "Failed upgrade attempt kept for diagnosis (mender-upgrade)")
    return failed_marker


def reset_branch(integration: Path, tag: str) -> None:
    """Undo merges that were never deployed: back to marker `tag`, containers untouched."""
    git.Repo(integration).git.reset("--hard", "--quiet", repository.marker_ref(tag))
