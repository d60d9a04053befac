"""Human approval gates: a typed form in the Prefect UI, the CLI, or the terminal."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput


class UpgradeApproval(RunInput):
    approve: bool = False
    comment: str = ""
    approver: str = ""


@dataclass
class Decision:
    gate: str
    approved: bool
    approver: str
    comment: str
    outcome: str  # approved, rejected, timed out


def ask_approval(gate: str, description: str, timeout_s: float, poll_interval: int) -> Decision:
    """Pause the run until someone answers the form; no answer within `timeout_s` is a no."""
    try:
        answer = pause_flow_run(wait_for_input=UpgradeApproval.with_initial_data(description=description),
                                timeout=max(1, int(timeout_s)), poll_interval=poll_interval, key=gate)
    except FlowPauseTimeout:
        return Decision(gate, False, "", f"no answer within {timeout_s / 60:.1f} min", "timed out")
    return Decision(gate, answer.approve, answer.approver or "(anonymous)", answer.comment,
                    "approved" if answer.approve else "rejected")
