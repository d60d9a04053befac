"""The quiet period's guardian process, without Docker: how it is started and released. What it
does when the run is cancelled or killed is proven on the sandbox (tests/faults:
test_served_cancel.py, test_downtime.py test_kill_mid_cycle_rolls_back_by_the_guardian)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from mender_upgrade.flows.guardian import QuietGuard
from mender_upgrade.flows.report import RunReport
from mender_upgrade.tasks.settings import load_settings


class _Undo:
    writers = ["mender-deployments"]
    cleanup = False
    first_marker = None
    cycled = False
    backup = SimpleNamespace(key="20261130T000000Z-x/manifest.json")


def _settings(tmp_path: Path):
    return load_settings({"host_id": "guarded", "integration_dir": str(tmp_path),
                          "backup": {"target": "s3://bucket/prefix", "endpoint_url": "http://127.0.0.1:9",
                                     "access_key_id": "AKIA-guardian", "secret_access_key": "s3cr3t-guardian"}})


def test_guardian_lives_outside_the_run_and_ends_when_released(tmp_path):
    guard = QuietGuard(_settings(tmp_path), RunReport(host="guarded", run_id="local"), "2.6.4", None)
    try:
        # Its own session: neither a signal to the run's process group nor the run's death reaches it.
        assert os.getsid(guard.pid) == guard.pid != os.getsid(0)
        # The settings (the S3 secret with them) went through the pipe, not the command line.
        assert b"s3cr3t" not in Path(f"/proc/{guard.pid}/cmdline").read_bytes()
        guard.note(_Undo())
        assert guard.proc.poll() is None  # still guarding
        assert not guard.hand_over(RuntimeError("a failure, not a cancellation"))  # the run rolls back itself
        guard.release()
        assert guard.proc.returncode == 0
    finally:
        if guard.proc.poll() is None:
            guard.proc.kill()
