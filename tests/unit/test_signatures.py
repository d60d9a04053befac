"""Approval payloads signed and verified with real OpenSSH keys (ssh-keygen -Y)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mender_upgrade.flows.approvals import Binding, UpgradeApproval, judge
from mender_upgrade.tasks.signatures import SignatureInvalid, approval_payload, plan_digest, sign, verify

RUN = "0b7e4a55-5b43-4a59-9d0f-2f4b1f0c1e11"
DIGEST = plan_digest("mender-prod-1", "2.6.4", "2.7.2", ["2.7.2"], ["--- a/prod.yml\n+++ b/prod.yml\n"])


def make_key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    alice, mallory = make_key(tmp_path, "alice"), make_key(tmp_path, "mallory")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'alice@example.com namespaces="mender-upgrade" {alice.with_suffix(".pub").read_text()}')
    return {"alice": alice, "mallory": mallory, "signers": signers}


def test_a_signature_by_an_allowed_key_names_its_identity(keys):
    payload = approval_payload(RUN, "plan", DIGEST, True)
    assert verify(payload, sign(payload, keys["alice"]), keys["signers"]) == "alice@example.com"


def test_a_signature_by_an_unknown_key_is_refused(keys):
    payload = approval_payload(RUN, "plan", DIGEST, True)
    with pytest.raises(SignatureInvalid, match="not from a key in") as err:
        verify(payload, sign(payload, keys["mallory"]), keys["signers"])
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(keys["mallory"].with_suffix(".pub"))], check=True,
                                 capture_output=True, text=True).stdout.split()[1]
    assert f"by ED25519 key {fingerprint} is not from a key in {keys['signers']}" in err.value.message


SIGNED = approval_payload(RUN, "plan", DIGEST, True)


@pytest.mark.parametrize("signed,checked", [
    (SIGNED, approval_payload("11111111-2222-3333-4444-555555555555", "plan", DIGEST, True)),  # another run
    (SIGNED, approval_payload(RUN, "plan", plan_digest("mender-prod-1", "2.6.4", "3.0.0", ["2.7.2", "3.0.0"], []),
                              True)),  # a changed plan
    (SIGNED, approval_payload(RUN, "downtime-2-7-2", DIGEST, True)),  # another gate
    (approval_payload(RUN, "plan", DIGEST, False), SIGNED),  # a rejection's signature used as an approval's
])
def test_a_signature_does_not_verify_for_another_run_plan_gate_or_decision(keys, signed, checked):
    with pytest.raises(SignatureInvalid, match="does not match this run's payload"):
        verify(checked, sign(signed, keys["alice"]), keys["signers"])


def test_the_plan_digest_changes_with_the_reviewed_diff():
    assert plan_digest("h", "2.6.4", "2.7.2", ["2.7.2"], ["a"]) != plan_digest("h", "2.6.4", "2.7.2", ["2.7.2"], ["b"])


def _answer(signature: str = "", **binding) -> UpgradeApproval:
    fields = {"run_id": RUN, "gate": "plan", "plan_digest": DIGEST} | binding
    return UpgradeApproval(approve=True, approver="alice", comment="ok", signature=signature, **fields)


def test_judge(keys):
    binding = Binding(RUN, DIGEST, require_signed=True, allowed_signers=keys["signers"])
    signed = sign(approval_payload(RUN, "plan", DIGEST, True), keys["alice"])
    ok = judge("plan", _answer(signed), binding)
    assert (ok.outcome, ok.approved, ok.verified_identity, ok.approver) == ("approved", True, "alice@example.com", "alice")
    unsigned = judge("plan", _answer(), binding)
    assert unsigned.outcome == "refused" and not unsigned.approved and "require_signed" in unsigned.comment
    replayed = judge("plan", _answer(signed, run_id="11111111-2222-3333-4444-555555555555"), binding)
    assert replayed.outcome == "refused" and "replayed" in replayed.comment
    by_mallory = sign(approval_payload(RUN, "plan", DIGEST, True), keys["mallory"])
    refused = judge("plan", _answer(by_mallory), binding)
    assert refused.outcome == "refused" and "not from a key in" in refused.comment
    typed_only = judge("plan", _answer(), Binding(RUN, DIGEST))
    assert typed_only.approved and typed_only.verified_identity == ""
