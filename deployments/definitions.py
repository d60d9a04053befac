"""The deployments for `mender-upgrade serve` (prefect.yaml declares the same for workers):
the scheduled maintenance window, the manual one and the weekly restore drill of one host."""

from __future__ import annotations

from prefect.schedules import Cron

from mender_upgrade.deployments.notifications import apply_notifications
from mender_upgrade.deployments.serving import serve_keeping_paused_runs
from mender_upgrade.flows.drill import restore_drill_flow
from mender_upgrade.flows.upgrade import upgrade_mender
from mender_upgrade.tasks.host_policy import narrow, owned_fields, require_host_policy
from mender_upgrade.tasks.settings import UpgradeSettings

DRILL_CRON = "0 3 * * 0"


def deployment_names(host: str) -> list[str]:
    """The deployment names of `host`, the same in `serve` and prefect.yaml."""
    return [f"{host}-maintenance-window", f"{host}-manual", f"{host}-weekly-restore-drill"]


def deployment_parameters(settings: UpgradeSettings) -> dict:
    """What the config file set, less what the host file owns: a deployment's parameters are
    readable (and its form editable) by anyone with API access, so they never carry the
    integration dir, the backup target or its credentials; the runs take those from the host file."""
    return {"settings": settings.model_dump(mode="json", exclude_unset=True, exclude=owned_fields())}


def build(settings: UpgradeSettings, cron: str, timezone: str) -> list:
    params = deployment_parameters(settings)
    host = settings.host()
    window_name, manual_name, drill_name = deployment_names(host)
    scheduled = upgrade_mender.to_deployment(
        name=window_name, schedules=[Cron(cron, timezone=timezone)], parameters=params,
        tags=["mender-upgrade", host], description="Upgrade in the maintenance window (approval in the UI)")
    manual = upgrade_mender.to_deployment(
        name=manual_name, parameters=params, tags=["mender-upgrade", host],
        description="Start from the UI's Run button; the form holds every setting")
    drill = restore_drill_flow.to_deployment(
        name=drill_name, schedules=[Cron(DRILL_CRON, timezone=timezone)], parameters=params,
        tags=["mender-upgrade", host], description="Restore the newest verified backup into throw-away containers")
    return [scheduled, manual, drill]


def serve_all(settings: UpgradeSettings, cron: str, timezone: str, webhook_url: str | None = None) -> None:
    """Serve the deployments here; with `webhook_url`, first apply the notifications automation.
    Stopping (SIGTERM) does not cancel runs paused for approval: see deployments/serving.py.

    The served runs are started through the Prefect API, so they take the protected settings
    from the host file: without one, or with a config that contradicts it, nothing is served."""
    policy = require_host_policy()
    narrowed = narrow(settings, policy)  # the config may only narrow the host file, like any run
    narrowed.backup.s3_secret()  # a missing credential is named now, not at 01:00 on Saturday
    if webhook_url:
        apply_notifications(webhook_url)
    serve_keeping_paused_runs(build(settings, cron, timezone))
