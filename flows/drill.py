"""The restore drill as a flow, for a scheduled deployment: restore the newest verified backup
into throw-away containers, compare, report; production is not touched."""

from __future__ import annotations

import docker
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mender_upgrade.flows.host_guard import allowed_settings
from mender_upgrade.tasks.backup import newest_verified_backup
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.mongo import mongo_container
from mender_upgrade.tasks.restore import restore_drill
from mender_upgrade.tasks.run_record import artifact_key
from mender_upgrade.tasks.settings import UpgradeSettings


@flow(name="restore-drill", persist_result=False)
def restore_drill_flow(settings: UpgradeSettings = UpgradeSettings()) -> dict:
    log = get_run_logger()
    settings, warnings = allowed_settings(settings)
    for warning in warnings:
        log.warning(warning)
    store = settings.backup_store()
    manifest = newest_verified_backup(store)
    client = docker.from_env(timeout=600)
    image = mongo_container(client, settings.compose_project).attrs["Config"]["Image"]
    report = restore_drill(client, store, manifest, image, host_id=settings.host(), log=log.info)
    outcome = "passed" if report.passed else "FAILED"
    create_markdown_artifact(key=artifact_key("restore-drill", settings.host()), description=f"restore drill {outcome}",
                             markdown="\n".join([
                                 f"# Restore drill of `{manifest.target}/{manifest.key}`: **{outcome}**",
                                 f"- {report.collections_checked} collections and {report.files_checked} files compared",
                                 *[f"- difference: {d}" for d in report.differences[:50]]]))
    if not report.passed:
        raise UpgradeError(f"restore drill of {manifest.backup_id} found {len(report.differences)} differences",
                           "see the drill artifact; the backup may not be restorable")
    return {"backup_id": manifest.backup_id, "collections": report.collections_checked, "files": report.files_checked}
