"""The quiet period's guardian: a process outside the run's process group that puts the server
back when the run's own process cannot.

A cancel from the UI of a run that `serve` or a process worker executes ends in Prefect 3.9.1's
CancellationManager (prefect/runner/_cancellation_manager.py `cancel`, _process_manager.py
`kill`): a control-channel intent, SIGTERM to the run's process (serve) or its process group
(worker, isolated group), and SIGKILL to the same 30 s later if it still lives. A rollback takes
longer than 30 s, so the run's process cannot be trusted to finish one after a cancel; nor after
an OOM kill or a `kill -9`. So when the writers stop, the run starts this guardian in a session
of its own (no group kill reaches it) and tells it, through a pipe, what it changed so far: the
writers it stopped, the backup, the cleanup, the first pre-upgrade marker, whether a cycle began.

- The run ends its quiet period (healthy on the new version, or rolled back itself): `release`;
  the guardian exits.
- The run is cancelled (SIGTERM, Ctrl-C) during the quiet period: `hand_over`; the run ends at
  once, Cancelled, its report saying the guardian puts the server back, and the guardian does:
  the rollback with this run's verified backup once a cycle began, else the undo (branch reset,
  writers started, cleanup put back). It then publishes the run's report again with the outcome.
- The run's process dies without either (SIGKILL): the pipe's end of file; the same as a hand-over.

The settings reach the guardian through the pipe, never its command line or a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from uuid import UUID

from mender_upgrade.flows.approvals import Decision
from mender_upgrade.flows.lease import LeaseKeeper
from mender_upgrade.flows.report import RunReport, describe, report_key
from mender_upgrade.tasks.run_record import Outcome
from mender_upgrade.tasks.settings import UpgradeSettings, load_settings

CANCELLED = "the run was cancelled (or its process told to stop)"
KILLED = "the run's process ended during the quiet period without finishing it (killed)"


def _api_settings() -> dict:
    """This run's Prefect API, which may exist only as temporary settings (the CLI's local server)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL
    return {"url": PREFECT_API_URL.value(), "auth_string": PREFECT_API_AUTH_STRING.value(), "key": PREFECT_API_KEY.value()}


def _on_this_api(api: dict):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings
    settings = {PREFECT_API_URL: api.get("url"), PREFECT_API_AUTH_STRING: api.get("auth_string"), PREFECT_API_KEY: api.get("key")}
    return temporary_settings(updates={setting: value for setting, value in settings.items() if value})


def _secret_settings(settings: UpgradeSettings) -> dict:
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = settings.backup.s3_secret()  # resolved: the guardian has no block access
    data["backup"]["secret_block"] = None
    return data


class QuietGuard:
    """The run's side: start the guardian, tell it each change, release or hand over."""

    def __init__(self, settings: UpgradeSettings, report: RunReport, current: str, lease: LeaseKeeper | None) -> None:
        self.report, self.lease = report, lease
        self.proc = subprocess.Popen([sys.executable, "-m", "mender_upgrade.flows.guardian"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.state: dict = {"current": current}
        self._send({"settings": _secret_settings(settings), "api": _api_settings(), "state": self.state,
                    "report": report.to_dict(), "lease_id": str(lease.lease_id) if lease else None})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, message: dict) -> None:
        if self.proc.stdin is None or self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            # The guardian died: the run goes on (its own rollback still works), the report says so.
            self.report.warnings.append("the quiet period's guardian process ended early: a kill of this run's "
                                        "process would leave the server as it is")
            self.proc.stdin.close()

    def note(self, undo) -> None:
        """What the run changed so far (`undo`: mender_upgrade.flows.upgrade._Undo)."""
        self.state.update(writers=undo.writers, cleanup=undo.cleanup, first_marker=undo.first_marker, cycled=undo.cycled,
                          manifest_key=undo.backup.key if undo.backup else None)
        self._send({"state": self.state, "report": self.report.to_dict()})

    def hand_over(self, exc: BaseException) -> str:
        """On a cancellation: the guardian puts the server back, the run ends now; returns the
        report's reason. Returns "" (nothing handed over) for any other exception: the run rolls
        back itself."""
        from prefect.exceptions import TerminationSignal
        if not isinstance(exc, (TerminationSignal, KeyboardInterrupt)) or self.proc.stdin is None \
                or self.proc.stdin.closed:
            return ""
        what = "rolls the server back with this run's backup" if self.state.get("cycled") else \
            "starts the stopped services of the old version again and undoes this run's changes"
        self._send({"recover": CANCELLED, "report": self.report.to_dict()})
        self.proc.stdin.close()
        if self.lease is not None:  # the guardian renews it while it works, and frees it after
            self.lease.handed_over = True
        return (f"{CANCELLED} during the quiet period; the guardian process (pid {self.pid}, outside the run's "
                f"process group) {what}, then publishes this report again with the result")

    def release(self) -> None:
        """The quiet period ended with the server healthy (new or rolled back): nothing to guard."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self._send({"done": True})
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _report(data: dict) -> RunReport:
    data = dict(data)
    data["approvals"] = [Decision(**a) for a in data.get("approvals", [])]
    return RunReport(**data)


def recover(settings: UpgradeSettings, state: dict, report: RunReport, why: str) -> None:
    """Put the server back as the run would have: the rollback once a cycle began, else the undo.
    Fills the report's outcome and reason."""
    from mender_upgrade.flows.upgrade import _Undo  # the run's own undo, not a second copy of it
    from mender_upgrade.tasks import steps
    from mender_upgrade.tasks.backup import read_manifest

    if state.get("cycled") and state.get("manifest_key") and state.get("first_marker"):
        manifest = read_manifest(settings.backup_store(), state["manifest_key"])
        try:
            steps.rollback_task(settings, manifest, state["first_marker"])
        except Exception as exc:
            report.outcome = Outcome.FAILED
            report.reason = f"{why}; the guardian's rollback failed: {getattr(exc, 'message', exc)}"
            raise
        report.outcome = Outcome.ROLLED_BACK
        report.reason = f"{why}; the guardian rolled back: the server is back on {state['current']} with backup {manifest.backup_id}"
        return
    undo = _Undo(settings, report, "")
    undo.writers, undo.cleanup, undo.first_marker = state.get("writers", []), state.get("cleanup", False), state.get("first_marker")
    report.outcome = Outcome.CANCELLED if why == CANCELLED else Outcome.FAILED
    report.reason = undo.run(f"{why}; the guardian undid it")


def publish_for_run(report: RunReport, killed: bool) -> None:
    """The run's report artifact, published from outside the run (its process has ended). A killed
    run would stay RUNNING in the history: it is marked Crashed with the guardian's outcome (a
    cancelled run ended Cancelled itself)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, LogCreate
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(key=report_key(report.host), type="markdown", data=report.to_markdown(),
                                              description=describe(report), flow_run_id=UUID(report.run_id)))
        client.create_logs([LogCreate(name="mender-upgrade.guardian", level=20, timestamp=datetime.now(timezone.utc),
                                      flow_run_id=UUID(report.run_id),
                                      message=f"guardian: outcome: {report.outcome} {report.reason}")])
        if killed:
            client.set_flow_run_state(UUID(report.run_id), Crashed(message=f"guardian: {report.outcome}: {report.reason}"),
                                      force=True)


def main() -> int:
    state: dict = {}  # the run's last `state` message (QuietGuard.state)
    settings, report, why, lease_id = None, None, KILLED, None
    api: dict = {}
    for line in sys.stdin.buffer:
        message = json.loads(line)
        if message.get("done"):
            return 0
        if "settings" in message:
            settings = load_settings(message["settings"])
            api, lease_id = message.get("api") or {}, message.get("lease_id")
        state = message.get("state", state)
        report = _report(message["report"]) if "report" in message else report
        if "recover" in message:
            why = message["recover"]
            break
    if settings is None or report is None:
        return 0  # ended before the writers stopped: nothing changed yet
    with _on_this_api(api):
        lease = LeaseKeeper(UUID(lease_id)) if lease_id else None  # the host stays locked while we work
        try:
            recover(settings, state, report, why)
        finally:
            publish_for_run(report, killed=why == KILLED)
            if lease is not None:
                lease.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
