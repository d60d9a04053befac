"""How a run ended, and the one reader of what its report says about it.

The report itself is written by flows/report.py; this module holds what steps outside the flow
(tasks/staging.py) and the history need to read it back: the outcome, the report's artifact key,
the description's headline and its JSON summary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

FLOW_NAME = "upgrade-mender"
REPORT_KEY = "upgrade-report"


class Outcome(StrEnum):
    """How an upgrade run ended (its report's headline word)."""

    RUNNING = "running"              # not ended yet
    COMPLETED = "completed"          # at the target (or already was)
    REJECTED = "rejected"            # a person said no at an approval
    TIMED_OUT = "timed out"          # nobody answered an approval in time
    REFUSED = "refused"              # the plan, host file, staging, review or an answer was not acceptable
    WINDOW_CLOSED = "window closed"  # not enough of the maintenance window left
    FAILED = "failed"                # an error before downtime; what this run changed was undone
    ROLLED_BACK = "rolled back"      # an error after downtime began; restored from this run's backup
    CANCELLED = "cancelled"          # stopped by a person (or the process told to stop)


def artifact_key(kind: str, host: str) -> str:
    """The key of `host`'s artifacts of one kind: keys carry the host, so hosts that record to
    one Prefect server keep their histories apart (keys allow lowercase letters, digits, '-')."""
    return f"{kind}-{host.lower().replace('.', '-').replace('_', '-')}"


def report_key(host: str) -> str:
    """The artifact key of `host`'s run reports (one key per host: the UI shows its history)."""
    return artifact_key(REPORT_KEY, host)


@dataclass(frozen=True)
class ReportSummary:
    """What a run's report says, read back from its artifact description (history, staging)."""

    outcome: Outcome | str  # an outcome this version does not know stays the text it was
    host: str
    current: str
    target: str
    reason: str = ""
    approvals: tuple[dict, ...] = ()  # {gate, outcome, approver}
    backup_id: str = ""
    downtime_s: float | None = None


# The description's first line, for people; the fenced JSON after it, for programs.
_HEADLINE = re.compile(r"upgrade (?P<outcome>[a-z ]+): (?P<host>\S+) (?P<current>\S+) -> (?P<target>\S+)")
_SUMMARY = re.compile(r"```json\n(?P<json>.*)\n```", re.DOTALL)


def description(outcome: Outcome, host: str, current: str, target: str, summary: dict) -> str:
    """A report's artifact description: "upgrade <outcome>: <host> <from> -> <to>", then `summary` as JSON."""
    return (f"upgrade {outcome}: {host} {current or '?'} -> {target or '?'}\n\n"
            f"```json\n{json.dumps(summary)}\n```")


def _outcome(text: str) -> Outcome | str:
    try:
        return Outcome(text)
    except ValueError:
        return text


def parse_description(text: str) -> ReportSummary | None:
    """The one reader of report descriptions; None for anything else (reports from before the
    summary was added give the headline's fields only)."""
    head, _, rest = text.partition("\n")
    found = _HEADLINE.fullmatch(head)
    if not found:
        return None
    extra: dict = {}
    block = _SUMMARY.search(rest)
    if block:
        try:
            extra = json.loads(block["json"])
        except json.JSONDecodeError:
            extra = {}
    if not isinstance(extra, dict):
        extra = {}
    downtime = extra.get("downtime_s")
    return ReportSummary(
        outcome=_outcome(found["outcome"]), host=found["host"], current=found["current"], target=found["target"],
        reason=str(extra.get("reason") or ""),
        approvals=tuple(a for a in extra.get("approvals") or () if isinstance(a, dict)),
        backup_id=str(extra.get("backup_id") or ""),
        downtime_s=float(downtime) if isinstance(downtime, (int, float)) else None)
