"""Staging before production: a production run may start only after the same target version
completed on the staging server (both record their runs on the same Prefect server).

The evidence is the staging host's own run reports (artifact key `upgrade-report-<host>`, one
version per run), not the flow runs' parameters: a report names the host and the version the
run resolved, while the parameters may say neither (an empty host_id means "this machine's
hostname", an empty target_version "the newest allowed"). The newest report for the target
decides: once a run completed it, a later run to the same target finds nothing to do and
completes again, so a later failed or rolled-back one means staging no longer runs it. The
report's flow run must also have ended Completed, so a report alone (written in the run's
`finally`) is not enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowFilter, FlowFilterName,
                                            FlowRunFilter, FlowRunFilterId, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.repository import validate_version
from mender_upgrade.tasks.run_record import FLOW_NAME, Outcome, parse_description, report_key
from mender_upgrade.tasks.settings import HOST_REF_PATTERN, ConfigInvalid

PAGE = 50


class StagingNotDone(UpgradeError):
    """The target version has not completed on the staging server (or no longer runs there)."""


@dataclass(frozen=True)
class StagingReport:
    flow_run_id: UUID
    outcome: Outcome | str


def staging_reports(client: SyncPrefectClient, host: str, target: str) -> Iterator[StagingReport]:
    """`host`'s run reports for `target`, newest first."""
    for offset in count(step=PAGE):
        page = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[report_key(host)])),
                                     sort=ArtifactSort.CREATED_DESC, limit=PAGE, offset=offset)
        for artifact in page:
            found = parse_description(artifact.description or "")
            # Skipped: another host whose key slug is the same (a.b, a-b), reports from before
            # descriptions named the versions, and reports published outside a flow run.
            if found and found.host == host and found.target == target and artifact.flow_run_id:
                yield StagingReport(artifact.flow_run_id, found.outcome)
        if len(page) < PAGE:
            return


def completed_upgrade_run(client: SyncPrefectClient, flow_run_id: UUID) -> FlowRun | None:
    """The flow run, if it is a run of upgrade-mender that ended Completed."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))),
        limit=1)
    return runs[0] if runs else None


def require_completed_on_staging(staging_host: str, target: str) -> str:
    """Return which run proves `target` completed on `staging_host`; raise StagingNotDone if none does."""
    if not isinstance(staging_host, str) or not re.fullmatch(HOST_REF_PATTERN, staging_host):
        raise ConfigInvalid(f"staging.require_completed_on: {staging_host!r} is not a host id",
                            "give the staging server's host_id (letters, digits, '.', '_', '-')")
    validate_version(target)
    first = (f"upgrade the staging server {staging_host} to {target} first (its settings' host_id "
             f"{staging_host}, recording to this Prefect server), check it, then start this run again")
    with get_client(sync_client=True) as client:
        newest = next(staging_reports(client, staging_host, target), None)
        if newest is None:
            raise StagingNotDone(f"no upgrade of staging host {staging_host} to {target} is on record", first)
        if newest.outcome != Outcome.COMPLETED:
            raise StagingNotDone(f"the latest upgrade of staging host {staging_host} to {target} ended "
                                 f"'{newest.outcome}' (flow run {newest.flow_run_id})",
                                 f"see that run's report for why; {first}")
        run = completed_upgrade_run(client, newest.flow_run_id)
    if run is None:
        raise StagingNotDone(f"the report of staging host {staging_host}'s upgrade to {target} says completed, "
                             f"but its flow run {newest.flow_run_id} did not end Completed", first)
    when = run.end_time.isoformat(timespec="seconds") if run.end_time else "?"
    return f"{target} completed on staging host {staging_host} in flow run {run.name} ({run.id}), ended {when}"
