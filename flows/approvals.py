"""Human approval gates: a typed form in the Prefect UI, the CLI, or the terminal.

Each form carries the run id, the gate and the plan's digest; an answer for another run or plan
is refused. An answer may carry an SSH signature of that payload (`mender-upgrade approve
--sign-with KEY`), verified against the host's allowed_signers; with `require_signed` an unsigned
answer counts as rejected. A typed approver name is what someone typed; a verified identity is
the allowed_signers principal whose key signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput

from mender_upgrade.tasks.signatures import SignatureInvalid, approval_payload, verify


class UpgradeApproval(RunInput):
    approve: bool = False
    comment: str = ""
    approver: str = ""
    run_id: str = ""       # filled in by the form: which run this answer is for
    gate: str = ""
    plan_digest: str = ""  # sha256 of the plan shown in the description
    signature: str = ""    # optional: `ssh-keygen -Y sign -n mender-upgrade` of the approval payload


@dataclass(frozen=True)
class Binding:
    """What an answer must be about, and how it must be signed."""

    run_id: str
    plan_digest: str
    require_signed: bool = False
    allowed_signers: Path | None = None


@dataclass
class Decision:
    gate: str
    approved: bool
    approver: str
    comment: str
    outcome: str  # approved, rejected, timed out, refused
    verified_identity: str = ""  # allowed_signers principal whose SSH key signed; empty: unsigned


def ask_approval(gate: str, description: str, timeout_s: float, poll_interval: int, binding: Binding) -> Decision:
    """Pause the run until someone answers the form; no answer within `timeout_s` is a no."""
    form = UpgradeApproval.with_initial_data(description=description, run_id=binding.run_id, gate=gate,
                                             plan_digest=binding.plan_digest)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=max(1, int(timeout_s)), poll_interval=poll_interval,
                                key=gate)
    except FlowPauseTimeout:
        return Decision(gate, False, "", f"no answer within {timeout_s / 60:.1f} min", "timed out")
    return judge(gate, answer, binding)


def judge(gate: str, answer: UpgradeApproval, binding: Binding) -> Decision:
    """The decision an answer amounts to: refused when it is for another run or plan, or when its
    signature does not verify, or when it is unsigned and signatures are required."""
    typed = answer.approver or "(anonymous)"
    if (answer.run_id, answer.gate, answer.plan_digest) != (binding.run_id, gate, binding.plan_digest):
        return Decision(gate, False, typed, f"the answer is for run {answer.run_id or '?'}, gate "
                        f"{answer.gate or '?'}, plan {answer.plan_digest[:12] or '?'}, not this run's "
                        f"{binding.run_id} {gate} {binding.plan_digest[:12]} (replayed or for a changed plan)", "refused")
    identity = ""
    if answer.signature:
        if binding.allowed_signers is None:
            return Decision(gate, False, typed, "a signed answer, but the host file names no "
                            "approval.allowed_signers to check it against", "refused")
        try:
            identity = verify(approval_payload(binding.run_id, gate, binding.plan_digest, answer.approve),
                              answer.signature, binding.allowed_signers)
        except SignatureInvalid as exc:
            return Decision(gate, False, typed, exc.message, "refused")
    elif binding.require_signed:
        return Decision(gate, False, typed, "unsigned answer and approval.require_signed is set "
                        f"(sign it: `mender-upgrade approve {binding.run_id} --sign-with KEY`)", "refused")
    return Decision(gate, answer.approve, typed, answer.comment, "approved" if answer.approve else "rejected", identity)
