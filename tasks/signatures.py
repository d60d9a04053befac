"""Approvals bound to one run's plan, optionally signed with the approver's SSH key.

The payload names the run, the gate, a digest of the plan (current version, target, hops, host,
the reviewed diff) and the decision, so an answer cannot be replayed on another run or on a
changed plan. Signatures are OpenSSH's (`ssh-keygen -Y sign`, namespace `mender-upgrade`),
checked against the host's `allowed_signers` file (`ssh-keygen -Y find-principals` / `verify`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

from mender_upgrade.tasks.errors import UpgradeError

NAMESPACE = "mender-upgrade"


class SignatureInvalid(UpgradeError):
    """A signed approval that does not verify against the host's allowed_signers."""


def plan_digest(host: str, current: str, target: str, hops: list[str], reviewed_diffs: list[str]) -> str:
    """sha256 over what the approver reviewed; any change to the plan changes it."""
    canonical = json.dumps({"host": host, "current": current, "target": target, "hops": hops,
                            "diffs": reviewed_diffs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def approval_payload(run_id: str, gate: str, digest: str, approve: bool) -> bytes:
    """The exact bytes an approver signs and the flow verifies."""
    return (f"mender-upgrade approval v1\nrun: {run_id}\ngate: {gate}\nplan: {digest}\n"
            f"decision: {'approve' if approve else 'reject'}\n").encode()


def sign(payload: bytes, key: Path) -> str:
    """An armored SSH signature of `payload` made with private key `key` (or its .pub with ssh-agent)."""
    if not key.is_file():
        raise UpgradeError(f"SSH key {key} does not exist", "pass --sign-with with your private key (or its .pub with ssh-agent)")
    done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE], input=payload,
                          capture_output=True, timeout=120)
    if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
        raise UpgradeError(f"ssh-keygen could not sign with {key}: {done.stderr.decode(errors='replace').strip()}",
                           "check the key file and its passphrase")
    return done.stdout.decode()


def _signing_key(sig: Path, payload: bytes) -> str:
    """' by <type> key SHA256:...' of the key that made `sig` (whoever that is), or '' if unreadable."""
    done = subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)], input=payload,
                          capture_output=True, timeout=30)
    found = re.search(rb"signature with (\S+) key (SHA256:[A-Za-z0-9+/=]+)", done.stdout)
    return f" by {found[1].decode()} key {found[2].decode()}" if done.returncode == 0 and found else ""


def verify(payload: bytes, signature: str, allowed_signers: Path) -> str:
    """The identity (principal) of `allowed_signers` whose key made `signature` over `payload`."""
    if not allowed_signers.is_file():
        raise SignatureInvalid(f"allowed_signers file {allowed_signers} does not exist",
                               "root lists approvers' public keys there (ssh-keygen ALLOWED SIGNERS format)")
    with tempfile.TemporaryDirectory(prefix="approval-sig-") as folder:
        sig = Path(folder) / "approval.sig"
        sig.write_text(signature)
        found = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed_signers),
                                "-n", NAMESPACE], capture_output=True, text=True, timeout=30)
        principals = found.stdout.split()
        if found.returncode != 0 or not principals:
            raise SignatureInvalid(f"the approval's signature{_signing_key(sig, payload)} is not from a key in "
                                   f"{allowed_signers}", "sign with a key listed there, or have root add your public key")
        checked = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", principals[0],
                                  "-n", NAMESPACE, "-s", str(sig)], input=payload, capture_output=True, timeout=30)
    if checked.returncode != 0:
        raise SignatureInvalid(f"the approval's signature by {principals[0]} does not match this run's payload "
                               "(another run, gate, plan or decision)",
                               "approve this run itself: `mender-upgrade approve RUN_ID --sign-with KEY`")
    return principals[0]
