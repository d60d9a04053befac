"""The two deployments, for `mender-upgrade serve` (prefect.yaml declares the same for workers)."""

from __future__ import annotations

from prefect.schedules import Cron

from deployments.notifications import apply_notifications
from deployments.serving import serve_keeping_paused_runs
from flows.drill import restore_drill_flow
from flows.upgrade import upgrade_mender
from tasks.settings import UpgradeSettings


def build(settings: UpgradeSettings, cron: str, timezone: str) -> list:
    # Only what the config file set (unset fields take the host file's values), never the secret.
    params = {"settings": settings.model_dump(mode="json", exclude_unset=True,
                                              exclude={"backup": {"secret_access_key"}})}
    host = settings.host()
    scheduled = upgrade_mender.to_deployment(
        name=f"{host}-maintenance-window", schedules=[Cron(cron, timezone=timezone)], parameters=params,
        tags=["mender-upgrade", host], description="Upgrade in the maintenance window (approval in the UI)")
    manual = upgrade_mender.to_deployment(
        name=f"{host}-manual", parameters=params, tags=["mender-upgrade", host],
        description="Start from the UI's Run button; the form holds every setting")
    drill = restore_drill_flow.to_deployment(
        name=f"{host}-weekly-restore-drill", schedules=[Cron("0 3 * * 0", timezone=timezone)], parameters=params,
        tags=["mender-upgrade", host], description="Restore the newest verified backup into throw-away containers")
    return [scheduled, manual, drill]


def serve_all(settings: UpgradeSettings, cron: str, timezone: str, webhook_url: str | None = None) -> None:
    """Serve the deployments here; with `webhook_url`, first apply the notifications automation.
    Stopping (SIGTERM) does not cancel runs paused for approval: see deployments/serving.py."""
    if webhook_url:
        apply_notifications(webhook_url)
    serve_keeping_paused_runs(build(settings, cron, timezone))
