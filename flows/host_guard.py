"""A run's settings: the host file's, narrowed by its parameters; a refusal recorded in its history."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.runtime import deployment, flow_run

from mender_upgrade.tasks.host_policy import SecretInParameters, settings_for_run
from mender_upgrade.tasks.settings import UpgradeSettings

MASK = "**********"


def allowed_settings(settings: UpgradeSettings) -> tuple[UpgradeSettings, list[str]]:
    """(settings this run may use, warnings). Raises ParametersWiden / HostFileUnsafe; a secret
    typed into the parameters is first blanked in the server's copy of them."""
    try:
        return settings_for_run(settings, started_through_api=deployment.id is not None)
    except SecretInParameters as exc:
        blank_stored_secrets(str(flow_run.id), exc.paths)
        raise


def blank_stored_secrets(run_id: str, paths: list[str]) -> None:
    """Replace the secret values in the stored parameters of run `run_id` (dotted paths under `settings`)."""
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(UUID(run_id)).parameters or {}
        for path in paths:
            where = parameters.get("settings")
            *parents, leaf = path.split(".")
            for part in parents:
                where = where.get(part) if isinstance(where, dict) else None
            if isinstance(where, dict) and where.get(leaf) is not None:
                where[leaf] = MASK
        client.update_flow_run(UUID(run_id), parameters=parameters)


