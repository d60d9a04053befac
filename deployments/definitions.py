"""The deployments for `mender-upgrade serve` (prefect.yaml declares the same for workers):
the scheduled maintenance window, the manual one and the weekly restore drill of one host."""

from __future__ import annotations

from prefect.schedules import Cron

from deployments.notifications import apply_notifications
from deployments.serving import serve_keeping_paused_runs
from flows.drill import restore_drill_flow
from flows.upgrade import upgrade_mender
from tasks.settings import UpgradeSettings, load_settings

DRILL_CRON = "0 3 * * 0"


def deployment_names(host: str) -> list[str]:
    """The deployment names of `host`, the same in `serve` and prefect.yaml."""
    return [f"{host}-maintenance-window", f"{host}-manual", f"{host}-weekly-restore-drill"]


def s3_secret_block_name(host: str) -> str:
    return f"mender-upgrade-s3-{host.lower().replace('.', '-').replace('_', '-')}"


def keep_secret_in_block(settings: UpgradeSettings) -> UpgradeSettings:
    """Deployment parameters are readable by anyone with API access: a secret key from the config
    goes into a Secret block (encrypted at rest, masked in the UI) which the parameters name."""
    secret = settings.backup.secret_access_key
    if secret is None:
        return settings
    from prefect.blocks.system import Secret
    name = s3_secret_block_name(settings.host())
    Secret(value=secret.get_secret_value()).save(name, overwrite=True)
    data = settings.model_dump()
    data["backup"] |= {"secret_access_key": None, "secret_block": name}
    return load_settings(data)


def build(settings: UpgradeSettings, cron: str, timezone: str) -> list:
    # Only what the config file set (unset fields take the host file's values), never the secret.
    params = {"settings": settings.model_dump(mode="json", exclude_unset=True,
                                              exclude={"backup": {"secret_access_key"}})}
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
    Stopping (SIGTERM) does not cancel runs paused for approval: see deployments/serving.py."""
    settings = keep_secret_in_block(settings)
    settings.backup.s3_secret()  # a missing credential is named now, not at 01:00 on Saturday
    if webhook_url:
        apply_notifications(webhook_url)
    serve_keeping_paused_runs(build(settings, cron, timezone))
