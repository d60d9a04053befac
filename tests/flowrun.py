"""Running the upgrade flow in tests: settings for the sandbox, an approver thread, the report."""

from __future__ import annotations

import threading
import uuid
from uuid import UUID

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                            FlowRunFilterTags, LogFilter, LogFilterFlowRunId)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventAnyResourceFilter, EventFilter

from mender_upgrade.flows.cli.upgrade import demo_settings
from mender_upgrade.flows.runner import terminal_approver
from mender_upgrade.flows.upgrade import upgrade_mender
from mender_upgrade.tasks.settings import UpgradeSettings, load_settings


def flow_settings(sandbox, target: str, **overrides) -> UpgradeSettings:
    """The demo settings with a fresh backup prefix and host id; nested dicts are merged."""
    base = demo_settings(sandbox, target).model_dump()
    base["backup"]["target"] = f"s3://{sandbox.s3.bucket}/flow-{uuid.uuid4().hex[:8]}"
    base["host_id"] = f"sandbox-{uuid.uuid4().hex[:6]}"
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return load_settings(base)


def run_flow(settings: UpgradeSettings, answer=None):
    """Run the flow; `answer(description) -> (approve, comment)` plays the approver via the API.
    Returns (final state, flow run id, approval descriptions shown)."""
    marker = f"t-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    asked: list[str] = []

    def run_id():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[marker])), limit=1)
        return str(runs[0].id) if runs else None

    if answer:
        terminal_approver(run_id, lambda d: (asked.append(d), answer(d))[1], "alice", stop)
    try:
        with tags(marker):
            state = upgrade_mender(settings=settings, poll_interval_s=1, return_state=True)
    finally:
        stop.set()
    return state, run_id(), asked


def report_of(run_id: str) -> str:
    """The run's markdown report artifact (what an operator reads in the UI): the newest, which
    after a cancellation during the quiet period is the one the guardian published."""
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])),
                                     sort=ArtifactSort.CREATED_DESC)
    return next(a.data for a in arts if (a.key or "").startswith("upgrade-report"))


def everything_recorded(run_id: str) -> tuple[int, str]:
    """(log line count, text of every log line, artifact, state message, stored parameter, run
    input (approval forms and answers) and event about the run) of a run."""
    with get_client(sync_client=True) as client:
        logs: list = []
        while True:  # every page: a real-files run logs more than the server's default page of 200
            page_of_logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])),
                                            limit=200, offset=len(logs))
            logs += page_of_logs
            if len(page_of_logs) < 200:
                break
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        run = client.read_flow_run(UUID(run_id))
        inputs = client.filter_flow_run_input(UUID(run_id), key_prefix="", limit=1000, exclude_keys=set())
        page = client.read_events(EventFilter(any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"])),
                                  limit=50)  # the API's largest page
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
    parts = [*(entry.message for entry in logs), *(f"{a.data} {a.description}" for a in arts), str(run.parameters),
             (run.state.message or "") if run.state else "", *(i.value for i in inputs),
             *(event.model_dump_json() for event in events)]
    return len(logs), "\n".join(parts)
