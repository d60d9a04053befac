"""The README's main job, `mender-upgrade demo`, approved by a person in the Prefect UI:
the demo starts its own Prefect server (UI at 127.0.0.1:4200), brings the sandbox up at 2.6.4,
pauses the real upgrade for approval; headless Chromium fills the form; the demo completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mender_upgrade.sandbox import stack
from tests.browser.ui_approval import CHROMIUM, approve_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.sandbox]
UI = "http://127.0.0.1:4200"


def _auth_string(home: Path, deadline: float) -> str:
    """The demo's local server's auth string (written 0600 under its home on first start)."""
    path = home / "prefect" / "api-auth-string"
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the demo never wrote {path}")
        time.sleep(0.5)
    time.sleep(0.5)  # written in one go right after creation
    return path.read_text().strip()


def _paused_upgrade_run(deadline: float, auth: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"{UI}/api", PREFECT_API_AUTH_STRING: auth}):
        while time.monotonic() < deadline:
            try:
                with get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upgrade-mender"])))
            except Exception:  # the demo's server is still starting
                runs = []
            for run in runs:
                keys = (run.state.state_details.run_input_keyset or {}) if run.state else {}
                if run.state and run.state.type.value == "PAUSED" and "schema" in keys:
                    time.sleep(1)  # the form schema is written right after the pause (Prefect #11905)
                    return str(run.id)
            time.sleep(1)
    raise AssertionError("the demo's upgrade never paused for approval")


def test_demo_is_approved_in_the_ui_and_completes(sandbox, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` (scripts/dev.sh test does it)")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env |= {"MENDER_UPGRADE_HOME": str(home)}
    cli = Path(sys.executable).parent / "mender-upgrade"
    demo = subprocess.Popen([str(cli), "demo"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        auth = _auth_string(home, deadline)
        run_id = _paused_upgrade_run(deadline, auth)
        approve_in_browser(UI, run_id, approver="operator@example.com", comment="approved in the browser",
                           screenshot=tmp_path / "demo-approval.png", auth_string=auth)
        output, _ = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            demo.kill()
        stack.mark_dirty(stack.attach())  # after the demo's own `sandbox up`: it ends at 2.7.2
        pid_file = home / "prefect" / "server.pid"
        if pid_file.exists():
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
    text = " ".join(output.split())
    assert demo.returncode == 0, output[-3000:]
    assert "approvals: answer in the Prefect UI" in text
    assert "completed" in text and "approved, typed name operator@example.com (unsigned): approved in the browser" \
        in text, output[-3000:]
    assert "2.7.2" in text
