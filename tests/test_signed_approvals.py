"""Approvals bound to the run and plan, signed with real SSH keys, through a real pause on the
session's Prefect test server (no Docker): the CLI's `approve` path answers the paused form."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.runtime import flow_run

from mender_upgrade.flows.approvals import Binding, ask_approval
from mender_upgrade.flows.report import RunReport, publish
from mender_upgrade.flows.runner import _form_defaults, answer_for, approve, history, report_markdown
from mender_upgrade.flows.upgrade import RunEnded, _approve, _now
from mender_upgrade.tasks.run_record import Outcome
from mender_upgrade.tasks.settings import load_settings
from mender_upgrade.tasks.signatures import plan_digest
from tests.unit.test_signatures import keys  # noqa: F401 (fixture)

DIGEST = plan_digest("probe-host", "2.6.4", "2.7.2", ["2.7.2"], ["diff"])


@flow(name="approval-probe", persist_result=False)
def approval_probe(require_signed: bool, allowed_signers: str) -> dict:
    binding = Binding(str(flow_run.id), DIGEST, require_signed, Path(allowed_signers))
    return vars(ask_approval("plan", "## probe", 60, 1, binding))


@flow(name="upgrade-mender", persist_result=False)
def upgrade_gate_probe(signers: str) -> None:
    """The upgrade flow's own approval step and report, without a Mender server to plan for:
    `_approve` records the decision in the report, `publish` makes it the run's history."""
    settings = load_settings({"host_id": "gate-probe", "approval": {"require_signed": True, "allowed_signers": signers}})
    report = RunReport(host="gate-probe", run_id=str(flow_run.id), current="2.6.4", target="2.7.2", hops=["2.7.2"],
                       plan_digest=DIGEST)
    try:  # as upgrade_mender ends a run: a no at the gate raises RunEnded
        _approve(report, "plan", "## probe", settings, 1, _now())
        report.outcome = Outcome.COMPLETED
    except RunEnded as ended:
        report.outcome, report.reason = ended.outcome, ended.reason
    publish(report)


def _paused_run_id(known: set[str], timeout_s: float = 60, flow_name: str = "approval-probe") -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(  # the session's server holds other tests' runs too
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PAUSED])))):
                keys = (run.state.state_details.run_input_keyset or {}) if run.state else {}
                if (run.state and run.state.type.value == "PAUSED" and str(run.id) not in known
                        and keys.get("schema")):
                    return str(run.id)
        time.sleep(0.3)
    raise AssertionError(f"no paused {flow_name} run")


def _answered_while_running(answer, flow_name: str, run) -> tuple[object, str]:
    """(what `run()` returns, the run id): `answer(run_id)` answers the form of the `flow_name` run
    that pauses, from another thread."""
    with get_client(sync_client=True) as client:
        known = {str(r.id) for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(
            any_=[flow_name])))}
    answered: list[str] = []

    def find_and_answer() -> None:
        answered.append(_paused_run_id(known, flow_name=flow_name))
        answer(answered[0])

    thread = threading.Thread(target=find_and_answer, daemon=True)
    thread.start()
    result = run()
    thread.join(10)
    return result, answered[0]


def _run_answered_by(answer, require_signed: bool, signers: Path) -> dict:
    """Run the probe; `answer(run_id)` answers its form from another thread."""
    return _answered_while_running(answer, "approval-probe", lambda: approval_probe(require_signed, str(signers)))[0]


def test_a_signed_approval_is_verified_and_cannot_be_replayed(prefect_api, keys):  # noqa: F811
    first: dict = {}

    def sign_and_keep(run_id: str) -> None:
        with get_client(sync_client=True) as client:
            keyset = client.read_flow_run(UUID(run_id)).state.state_details.run_input_keyset
        first.update(answer_for(_form_defaults(run_id, keyset), True, "reviewed", "alice", keys["alice"]))
        first["state after"] = approve(run_id, True, "reviewed", "alice", sign_with=keys["alice"])

    decision = _run_answered_by(sign_and_keep, True, keys["signers"])
    assert (decision["outcome"], decision["verified_identity"], decision["approver"]) == ("approved", "alice@example.com", "alice")
    assert first.pop("state after") == "Running"  # what `mender-upgrade approve` prints: the run's state once resumed

    # The same signed answer, replayed on another run waiting for the same plan.
    replayed = _run_answered_by(lambda run_id: resume_flow_run(run_id, run_input=first), True, keys["signers"])
    assert replayed["outcome"] == "refused" and not replayed["approved"]
    assert first["run_id"] in replayed["comment"] and "replayed" in replayed["comment"]

    # The replay with this run's id written over it: the signature no longer matches.
    forged = _run_answered_by(lambda run_id: resume_flow_run(run_id, run_input=first | {"run_id": run_id}),
                              True, keys["signers"])
    assert forged["outcome"] == "refused" and "does not match this run's payload" in forged["comment"]


def test_unsigned_and_unknown_key_answers_count_as_rejected(prefect_api, keys):  # noqa: F811
    unsigned = _run_answered_by(lambda run_id: approve(run_id, True, "", "root"), True, keys["signers"])
    assert unsigned["outcome"] == "refused" and "require_signed" in unsigned["comment"]
    by_mallory = _run_answered_by(lambda run_id: approve(run_id, True, "", "alice", sign_with=keys["mallory"]),
                                  True, keys["signers"])
    assert by_mallory["outcome"] == "refused" and "not from a key in" in by_mallory["comment"]
    assert by_mallory["verified_identity"] == ""
    typed = _run_answered_by(lambda run_id: approve(run_id, True, "ok", "bob"), False, keys["signers"])
    assert (typed["outcome"], typed["approver"], typed["verified_identity"]) == ("approved", "bob", "")


def _gate_probe_answered_by(answer, signers: Path) -> str:
    return _answered_while_running(answer, "upgrade-mender", lambda: upgrade_gate_probe(str(signers)))[1]


def test_an_unknown_keys_signature_is_refused_in_the_runs_history(prefect_api, keys):  # noqa: F811
    """Bad input: a signature from an unknown key. The run ends refused, nothing after the gate ran,
    and its report (the UI's history, `mender-upgrade history`) names the key and the typed name."""
    run_id = _gate_probe_answered_by(lambda r: approve(r, True, "looks fine", "alice", sign_with=keys["mallory"]),
                                     keys["signers"])
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(keys["mallory"].with_suffix(".pub"))], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    report = report_markdown(run_id)
    assert "**refused**" in report
    assert (f"approval `plan`: refused, typed name alice (unsigned): the approval's signature by ED25519 key "
            f"{fingerprint} is not from a key in {keys['signers']}") in report
    row = next(r for r in history() if r["id"] == run_id)
    assert row["outcome"] == "refused" and fingerprint in row["reason"]
    assert row["approvals"] == [{"gate": "plan", "outcome": "refused", "approver": "alice"}]


def test_a_verified_signer_is_shown_apart_from_the_typed_name(prefect_api, keys):  # noqa: F811
    run_id = _gate_probe_answered_by(lambda r: approve(r, True, "reviewed", "bob", sign_with=keys["alice"]),
                                     keys["signers"])
    report = report_markdown(run_id)
    assert "approval `plan`: approved, typed name bob (verified signer **alice@example.com**): reviewed" in report
