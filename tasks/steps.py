"""Thin Prefect task wrappers of the steps: clients from settings, a call, logging, artifacts.

Retries only on `TransientError` (exponential backoff with jitter); deterministic failures
(merge conflict, refused plan, invalid config, failed validation) stop at once. Side-effecting
steps are never cached. The logic lives in the step modules and is tested without Prefect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast
from uuid import UUID

import docker
import docker.errors
import requests
from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pymongo import MongoClient

from mender_upgrade.tasks import backup, cleanup, containers, mongo, mongo_upgrade, precopy, preflight, repository, rollback
from mender_upgrade.tasks.errors import retry_on_transient, typed_outside_errors
from mender_upgrade.tasks.mongo import MongoUnreachable
from mender_upgrade.tasks.run_record import artifact_key
from mender_upgrade.tasks.settings import BackupSettings, UpgradeSettings

TRANSIENT: dict[str, Any] = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
                                  retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
ONCE: dict[str, Any] = dict(retries=0, cache_policy=NO_CACHE)
# Never a cached answer: leftovers must be queried each time.
MONGO_RETRIES: dict[str, Any] = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_on_transient,
                                     cache_policy=NO_CACHE)


def _docker(wait_s: float = 0) -> docker.DockerClient:
    """A Docker client; with `wait_s`, wait that long for an engine that is restarting (a
    rollback must not give up because dockerd is coming back)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return docker.from_env(timeout=120)
        except docker.errors.DockerException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)


@contextmanager
def _deviceauth_db(mongo_url: str, project: str) -> Iterator[MongoClient]:
    """mender-mongo for one task. A lost connection is retried (MONGO_RETRIES) unless
    mender-mongo has stopped: waiting cannot bring it back, so that fails at once, saying so."""
    try:
        with cleanup.open_mongo(mongo_url) as client:
            yield client
    except MongoUnreachable:
        # MongoNotRunning when it has stopped; an engine that cannot tell keeps the retryable error.
        with suppress(docker.errors.DockerException, requests.RequestException, MongoUnreachable):
            mongo.mongo_container(_docker(), project)
        raise


@task(name="plan-upgrade", **TRANSIENT)
@typed_outside_errors
def plan_task(settings: UpgradeSettings) -> repository.UpgradePlan:
    repo = repository.open_integration(settings.integration_dir)
    repository.check_preconditions(repo)
    repository.fetch_tags(repo)
    plan = repository.plan_upgrade(repo, settings.target_version)
    get_run_logger().info(f"plan: {plan.current} -> {plan.target} via {plan.hops or '-'}"
                          + (f"; refused: {plan.refused}" if plan.refused else ""))
    return plan


@task(name="review-hops", **ONCE)
@typed_outside_errors
def review_task(settings: UpgradeSettings, current: str, hops: list[str]) -> list[repository.HopReview]:
    repo = repository.open_integration(settings.integration_dir)
    reviews, old = [], current
    for hop in hops:
        reviews.append(repository.review_hop(repo, old, hop))
        old = hop
    return reviews


@task(name="dry-run-hops", **ONCE)
@typed_outside_errors
def dry_run_task(settings: UpgradeSettings, hops: list[str], pull: bool = False) -> None:
    """Every hop's merge, configuration update and `./run config -q` in a throw-away worktree,
    so a conflict or a broken prod.yml refuses the run before anything changes. With `pull`,
    `./run pull` there too: every hop's images arrive while the old version serves."""
    def check_and_pull(root) -> None:
        repository.check_compose_config(root)
        if pull:
            containers.pull_images(root, _docker(), log=get_run_logger().warning)
    results = repository.dry_run(repository.open_integration(settings.integration_dir), hops, check=check_and_pull)
    get_run_logger().info(f"dry run of {len(results)} hop(s): merges and configuration checks pass"
                          + ("; images pulled" if pull else ""))


@task(name="preflight", **TRANSIENT)
@typed_outside_errors
def preflight_task(settings: UpgradeSettings, plan) -> list[preflight.Check]:
    checks = preflight.run_preflight(_docker(), settings.integration_dir, settings.backup_store(), plan,
                                     settings.compose_project)
    create_table_artifact(key=artifact_key("upgrade-preflight", settings.host()), table=[c.__dict__ for c in checks],
                          description="pre-flight checks")
    preflight.require_all(checks)
    return checks


def _progress_callback(title: str):
    """A byte counter feeding a Prefect progress artifact (updated at most every 16 MiB)."""
    artifact_id = cast(UUID, create_progress_artifact(progress=0.0, description=title))  # sync here
    state = {"bytes": 0, "reported": 0}

    def progress(n: int) -> None:
        state["bytes"] += n
        if state["bytes"] - state["reported"] >= 16 * 2**20:
            state["reported"] = state["bytes"]
            # Total size is unknown while streaming: show MiB done on a 0-99 scale.
            update_progress_artifact(artifact_id, progress=min(99.0, state["bytes"] / 2**20 / 10),
                                     description=f"{title}: {state['bytes'] / 2**20:.0f} MiB")
    return progress, artifact_id


@task(name="pre-copy", **TRANSIENT)
@typed_outside_errors
def precopy_task(settings: UpgradeSettings, run_id: str) -> precopy.PreCopy:
    """The hot part of the backup: every volume archived and verified while the server serves."""
    progress, artifact_id = _progress_callback("pre-copy")
    pre = precopy.pre_copy(_docker(), settings.integration_dir, settings.backup_store(), run_id,
                           project=settings.compose_project, holds_lock=True, log=get_run_logger().info,
                           progress=progress)
    update_progress_artifact(artifact_id, progress=100.0, description=f"pre-copy of {pre.bytes / 2**20:.0f} MiB "
                             f"verified ({pre.rate / 2**20:.0f} MiB/s)")
    return pre


@task(name="stop-writers", **ONCE)
@typed_outside_errors
def stop_writers_task(settings: UpgradeSettings) -> list[str]:
    """The quiet period begins: stop the services that write (quiesce mode; none in hot mode).
    They start again with the cycle, or with the undo of a failure before it."""
    if settings.backup.mode.value != "quiesce":
        return []
    writers = settings.writer_services
    if writers is None:
        writers = backup.writer_services(_docker(), settings.integration_dir, settings.compose_project)
    get_run_logger().info(f"quiet period: stopping the writers {', '.join(writers)}")
    if writers:
        containers.run_compose(settings.integration_dir, ["stop", *writers])
    return writers


@task(name="finish-backup", **ONCE)
@typed_outside_errors
def finish_backup_task(settings: UpgradeSettings, pre: precopy.PreCopy) -> precopy.QuietBackup:
    """In the quiet period: dump and volume deltas, verified; the backup then counts."""
    quiet = precopy.finish_backup(_docker(), settings.integration_dir, settings.backup_store(), pre,
                                  project=settings.compose_project, keep_last=settings.backup.keep_last,
                                  holds_lock=True, log=get_run_logger().info)
    manifest = quiet.manifest
    create_table_artifact(key=artifact_key("upgrade-backup", settings.host()),
                          description=f"verified backup {manifest.target}/{manifest.key}",
                          table=[{"object": o.key, "bytes": o.size, "sha256": o.sha256} for o in manifest.objects])
    return quiet


@task(name="mongo-url", **TRANSIENT)
@typed_outside_errors
def mongo_url_task(settings: UpgradeSettings) -> str:
    return mongo.mongo_url(_docker(), settings.compose_project)


@task(name="repository-hop", **ONCE)
@typed_outside_errors
def hop_task(settings: UpgradeSettings, old: str, new: str) -> repository.HopResult:
    result = repository.upgrade_hop(repository.open_integration(settings.integration_dir), old, new)
    logger = get_run_logger()
    marker = repository.marker_ref(result.merge.pre_upgrade_marker) if result.merge.pre_upgrade_marker else "none"
    logger.info(f"merged {new}: commit {result.merge.commit[:10]}, pre-upgrade state marked {marker}")
    for warning in result.warnings:
        logger.warning(warning)
    return result


@task(name="check-mongo-hop", **TRANSIENT)
@typed_outside_errors
def mongo_hop_check_task(settings: UpgradeSettings, old: str, new: str) -> None:
    with mongo.connect(mongo.mongo_url(_docker(), settings.compose_project)) as client:
        fcv = mongo.server_info(client).feature_compatibility_version
    mongo_upgrade.check_mongo_hop(old, new, fcv, mongo_upgrade.cpu_has_avx())


@task(name="cycle-containers", **ONCE)
@typed_outside_errors
def cycle_task(settings: UpgradeSettings, closed: bool = False) -> containers.CycleReport:
    logger = get_run_logger()
    report = containers.cycle_containers(_docker(), settings.integration_dir, project=settings.compose_project,
                                         health_timeout=settings.health_timeout_s,
                                         stability_window=settings.stability_window_s,
                                         smoke=settings.gateway_smoke, closed=closed, log=logger.info)
    for check in report.gateway:
        logger.info(f"gateway: {check}")
    create_table_artifact(key=artifact_key("upgrade-health", settings.host()),
                          description=f"health gate passed; downtime {report.downtime_s:.1f} s",
                          table=[{"service": s, "state": st, "kept running": s in report.kept}
                                 for s, st in sorted(report.services.items())])
    return report


@task(name="finish-mongo-hop", **TRANSIENT)
@typed_outside_errors
def mongo_hop_finish_task(settings: UpgradeSettings, new: str) -> str:
    with mongo.connect(mongo.mongo_url(_docker(), settings.compose_project)) as client:
        return mongo_upgrade.finish_mongo_hop(client, new)


@task(name="ensure-running", **TRANSIENT)
@typed_outside_errors
def ensure_running_task(settings: UpgradeSettings) -> list[str]:
    logger = get_run_logger()
    started = containers.ensure_running(_docker(wait_s=120), settings.integration_dir, project=settings.compose_project,
                                        health_timeout=settings.health_timeout_s,
                                        stability_window=min(settings.stability_window_s, 10),
                                        smoke=settings.gateway_smoke, log=logger.warning)
    logger.info("every service runs and is healthy" + (f" (started {', '.join(started)})" if started else ""))
    return started


@task(name="rollback", **ONCE)
@typed_outside_errors
def rollback_task(settings: UpgradeSettings, manifest: backup.Manifest, pre_upgrade_marker: str) -> rollback.RollbackReport:
    logger = get_run_logger()
    return rollback.roll_back(_docker(wait_s=120), settings.integration_dir, settings.backup_store(), manifest,
                              pre_upgrade_marker, project=settings.compose_project,
                              health_timeout=settings.health_timeout_s,
                              stability_window=min(settings.stability_window_s, 10), smoke=settings.gateway_smoke,
                              log=logger.warning)


@task(name="reset-branch", **ONCE)
def reset_branch_task(settings: UpgradeSettings, pre_upgrade_marker: str) -> None:
    """Undo merges that were never deployed: the branch back to `pre_upgrade_marker`."""
    rollback.reset_branch(settings.integration_dir, pre_upgrade_marker)
    get_run_logger().info(f"branch reset to {repository.marker_ref(pre_upgrade_marker)}")


@task(name="push-to-company-remote", **TRANSIENT)
def push_task(settings: UpgradeSettings, remote: str) -> list[str]:
    """The upgraded branch and its pre-upgrade markers to the company remote (staging hosts)."""
    pushed = repository.push_to_company_remote(settings.integration_dir, remote)
    get_run_logger().info(f"pushed to {remote}: {', '.join(pushed) or 'already up to date'}")
    return pushed


@task(name="find-decommissioned-leftovers", **MONGO_RETRIES)
def find_leftovers_task(mongo_url: str, host: str, *, project: str, databases: list[str] | None = None,
                        tenants: list[str] | None = None) -> cleanup.Leftovers:
    logger = get_run_logger()
    with _deviceauth_db(mongo_url, project) as client:
        leftovers = cleanup.find_decommissioned_leftovers(client, databases, tenants)
    logger.info(f"layout {leftovers.layout.value}: {leftovers.count} leftover document(s) "
                f"in {len(leftovers.scopes)} tenant scope(s)")
    create_table_artifact(key=artifact_key("deviceauth-leftovers", host), table=leftovers.rows(),
                          description=f"deviceauth decommissioning leftovers (dry run, {leftovers.layout.value})")
    return leftovers


@task(name="cleanup-deviceauth", **MONGO_RETRIES)
def cleanup_task(mongo_url: str, host: str, backup: BackupSettings, run_id: str, *, project: str,
                 databases: list[str] | None = None, tenants: list[str] | None = None) -> cleanup.CleanupReport:
    """Saves the leftovers under the host's namespace `<target>/<host>/cleanup/<run_id>/`:
    another host's prune or clean-up never touches them."""
    logger = get_run_logger()
    with _deviceauth_db(mongo_url, project) as client:
        report = cleanup.apply_cleanup(client, backup.open_store(host), run_id, databases, tenants, log=logger.info)
    saved = f"saved to {report.receipt.target}/{report.receipt.key}, sha256 {report.receipt.sha256}" \
        if report.receipt else "nothing to save"
    create_table_artifact(key=artifact_key("deviceauth-cleanup", host), table=report.rows(),
                          description=f"deviceauth cleanup verified: {saved}")
    return report


@task(name="undo-deviceauth-cleanup", **MONGO_RETRIES)
def undo_cleanup_task(mongo_url: str, host: str, backup: BackupSettings, run_id: str, *,
                      project: str) -> cleanup.RestoreReport | None:
    with _deviceauth_db(mongo_url, project) as client:
        report = cleanup.undo_cleanup(client, backup.open_store(host), run_id)
    if report:
        get_run_logger().warning(f"cleanup undone: restored {report.restored}, already there {report.already_present}")
    return report


@task(name="count-old-mender-clients", **MONGO_RETRIES)
def old_clients_task(mongo_url: str, host: str, *, project: str,
                     below: str = cleanup.OLD_CLIENT_BELOW) -> cleanup.OldClients:
    logger = get_run_logger()
    with _deviceauth_db(mongo_url, project) as client:
        result = cleanup.count_old_clients(client, below)
    if result.old:
        message = (f"{result.old} of {result.total} device(s) report a mender client older than {below} "
                   f"({', '.join(f'{v}: {n}' for v, n in result.versions.items())}); they still need the "
                   "old storage proxy address after 2.6 -> 2.7")
        logger.warning(message)
        create_markdown_artifact(key=artifact_key("old-mender-clients", host), markdown=f"**warning:** {message}")
    return result
