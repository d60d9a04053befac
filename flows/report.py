"""The run's account for operators and auditors: one markdown artifact per run."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from mender_upgrade.flows.approvals import Decision
from mender_upgrade.tasks.run_record import Outcome, description, report_key


@dataclass
class RunReport:
    host: str
    run_id: str
    current: str = ""
    target: str = ""
    hops: list[str] = field(default_factory=list)
    outcome: Outcome = Outcome.RUNNING  # set once, by the flow, when the run ends
    reason: str = ""
    approvals: list[Decision] = field(default_factory=list)
    plan_digest: str = ""  # sha256 of the reviewed plan that approvals bind to
    backup: dict = field(default_factory=dict)
    cleanup: dict | list[dict] = field(default_factory=dict)  # the cleanup's rows once it ran
    steps: dict[str, float] = field(default_factory=dict)
    downtime_s: float | None = None  # the container cycles: first stop until healthy
    unavailability_s: float | None = None  # the quiet period: first writer stop until healthy
    unavailability: dict[str, float] = field(default_factory=dict)  # its parts: dump, delta, ..., gate, other
    estimated_quiet_s: float | None = None  # what the window guard expected
    kept: dict[str, list[str]] = field(default_factory=dict)  # hop -> services its cycle left running
    warnings: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"# Mender upgrade on {self.host}: **{self.outcome}**", "",
                 f"- from **{self.current or '?'}** to **{self.target or '?'}**, hops: {' → '.join(self.hops) or '-'}"]
        if self.reason:
            lines.append(f"- why: {self.reason}")
        if self.plan_digest:
            lines.append(f"- plan digest: `{self.plan_digest}`")
        for d in self.approvals:
            verified = f"verified signer **{d.verified_identity}**" if d.verified_identity else "unsigned"
            lines.append(f"- approval `{d.gate}`: {d.outcome}, typed name {d.approver or '-'} ({verified}): "
                         f"{d.comment or '(no comment)'}")
        if self.backup:
            lines.append(f"- backup: `{self.backup.get('uri')}` ({self.backup.get('objects')} objects, verified "
                         f"{self.backup.get('verified_utc')})")
            for key, sha in self.backup.get("sha256", {}).items():
                lines.append(f"  - `{key}` sha256 `{sha}`")
        if self.cleanup:
            lines.append(f"- deviceauth cleanup: {self.cleanup}")
        if self.unavailability_s is not None:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.unavailability.items())
            # A rolled-back run's line says so in words, which also keeps it out of the window
            # guard's history (UNAVAILABILITY_LINE): a failed attempt and its rollback say nothing
            # about how long the next upgrade's quiet period will be.
            until = " until the old version served again" if self.outcome == Outcome.ROLLED_BACK else ""
            lines.append(f"- unavailability: {self.unavailability_s:.1f} s{until} ({parts})")
        if self.estimated_quiet_s is not None:
            lines.append(f"- quiet period estimated beforehand: {self.estimated_quiet_s:.1f} s")
        if self.downtime_s is not None:
            lines.append(f"- downtime: {self.downtime_s:.1f} s")
        for hop, kept in self.kept.items():
            lines.append(f"- {hop}: kept running (image and configuration unchanged): {', '.join(kept) or 'none'}")
        if self.warnings:
            lines += ["", "## Warnings", *[f"- {w}" for w in self.warnings]]
        if self.steps:
            lines += ["", "| step | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in self.steps.items()]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


UNAVAILABILITY_LINE = re.compile(r"^- unavailability: [0-9.]+ s \((?P<parts>[^)]*)\)$", re.MULTILINE)
PART = re.compile(r"^(?P<name>[a-z-]+) (?P<seconds>[0-9]+(?:\.[0-9]+)?) s$")


def unavailability_parts(markdown: str) -> dict[str, float] | None:
    """The parts of a report's unavailability line (None when the report has none)."""
    found = UNAVAILABILITY_LINE.search(markdown or "")
    if not found:
        return None
    parts = {}
    for item in found["parts"].split(", "):
        part = PART.match(item)
        if part:
            parts[part["name"]] = float(part["seconds"])
    return parts or None


def previous_unavailability(host: str, limit: int = 5) -> list[dict[str, float]]:
    """The unavailability parts of `host`'s newest reports that measured one (the window guard's
    history); empty when none is readable."""
    try:
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[report_key(host)])),
                                              sort=ArtifactSort.CREATED_DESC, limit=50)
    except Exception:  # no server history (e.g. a run without API): estimate from the configuration
        return []
    found = [p for p in (unavailability_parts(a.data if isinstance(a.data, str) else "") for a in artifacts) if p]
    return found[:limit]


def describe(report: RunReport) -> str:
    """The report artifact's description: "upgrade <outcome>: <host> <from> -> <to>", then its summary as JSON."""
    uri = report.backup.get("uri") or ""
    summary = {"reason": report.reason,
               "approvals": [{"gate": d.gate, "outcome": d.outcome, "approver": d.approver} for d in report.approvals],
               "backup_id": uri.rsplit("/", 2)[-2] if uri.count("/") >= 2 else "",
               "downtime_s": report.downtime_s}
    return description(report.outcome, report.host, report.current, report.target, summary)


def run_name(host: str, current: str, target: str) -> str:
    """`<host> <from>→<to>`: how runs are listed in the UI and in `history`."""
    return f"{host} {current or '?'}→{target or '?'}"


def name_at_start() -> str:
    """The flow's run name before planning knows the current version."""
    from prefect.runtime import flow_run
    settings = flow_run.parameters.get("settings")
    from mender_upgrade.tasks.settings import UpgradeSettings
    if not isinstance(settings, UpgradeSettings):  # a deployment's parameters may arrive as JSON
        settings = UpgradeSettings.model_validate(settings or {})
    return run_name(settings.host(), "?", settings.target_version or "newest")


def rename_run(report: RunReport) -> None:
    """Once planning knows both versions: `<host> <from>→<to>`."""
    from prefect.client.orchestration import get_client
    if report.run_id == "local":
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(UUID(report.run_id), name=run_name(report.host, report.current, report.target))


def publish(report: RunReport) -> None:
    # The description is read back by history and tasks/staging.py through parse_description.
    create_markdown_artifact(key=report_key(report.host), markdown=report.to_markdown(), description=describe(report))
