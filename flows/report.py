"""The run's account for operators and auditors: one markdown artifact per run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefect.artifacts import create_markdown_artifact

from flows.approvals import Decision

REPORT_KEY = "upgrade-report"


@dataclass
class RunReport:
    host: str
    run_id: str
    current: str = ""
    target: str = ""
    hops: list[str] = field(default_factory=list)
    outcome: str = "running"  # completed, rejected, refused, failed, rolled back
    reason: str = ""
    approvals: list[Decision] = field(default_factory=list)
    plan_digest: str = ""  # sha256 of the reviewed plan that approvals bind to
    backup: dict = field(default_factory=dict)
    cleanup: dict = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    downtime_s: float | None = None
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
        if self.downtime_s is not None:
            lines.append(f"- downtime: {self.downtime_s:.1f} s")
        if self.warnings:
            lines += ["", "## Warnings", *[f"- {w}" for w in self.warnings]]
        if self.steps:
            lines += ["", "| step | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in self.steps.items()]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def report_key(host: str) -> str:
    """The artifact key of `host`'s run reports (one key per host: the UI shows its history)."""
    return f"{REPORT_KEY}-{host.lower().replace('.', '-').replace('_', '-')}"


def publish(report: RunReport) -> None:
    # The description is read back by tasks/staging.py (what a host's run achieved, without
    # parsing the markdown): keep "upgrade <outcome>: <host> <from> -> <to>".
    create_markdown_artifact(key=report_key(report.host), markdown=report.to_markdown(),
                             description=f"upgrade {report.outcome}: {report.host} "
                                         f"{report.current or '?'} -> {report.target or '?'}")
