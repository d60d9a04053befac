"""A person approves the plan gate in the Prefect UI (headless Chromium) and the paused run completes."""

from __future__ import annotations

import contextvars
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.runner import api_healthy
from tests.browser.ui_approval import CHROMIUM, approve_in_browser

pytestmark = pytest.mark.browser

APPROVER = "alice@example.com"
COMMENT = "Plan reviewed.\nGo ahead in tonight's window."


def test_approve_plan_gate_in_the_ui(tmp_path: Path) -> None:
    # Checked before the ~20-40 s server start, and a failure rather than a skip: a skip would hide it.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium` (scripts/dev.sh test does it)")
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.approvals import Decision, ask_approval

    started: dict[str, Any] = {}
    run_id_known = threading.Event()

    @flow(name="ui-approval-gate")
    def gate() -> Decision:
        started["id"] = UUID(flow_run.id)
        run_id_known.set()
        return ask_approval("plan", "## Upgrade plan\n- back up mongo\n- bump 2.6.4 to 3.7.x", 300, 1)

    def run() -> None:
        try:
            started["state"] = gate(return_state=True)
        except BaseException as exc:  # surfaced by the assertions below
            started["error"] = exc
        finally:
            run_id_known.set()

    # Our own server, not the session harness (API only, no UI); temporary_settings, not a nested harness.
    with prefect_ui_server(tmp_path / "prefect-home") as ui_url, \
            temporary_settings({PREFECT_API_URL: f"{ui_url}/api"}):
        # Settings live in context variables, which a new thread does not inherit: hand it ours.
        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True, name="gate-flow")
        t0 = time.monotonic()
        worker.start()
        try:
            assert run_id_known.wait(60), "the flow did not start within 60 s"
            assert "id" in started, f"the flow failed before pausing: {started.get('error')!r}"
            run_id = started["id"]
            _wait_for_form(run_id, 60)
            paused = time.monotonic()

            # Playwright's sync API runs an event loop: call no Prefect sync API inside it (they turn async).
            approve_in_browser(ui_url, str(run_id), approver=APPROVER, comment=COMMENT,
                               screenshot=tmp_path / "approval-form.png")
            answered = time.monotonic()

            worker.join(60)
            assert not worker.is_alive(), "the flow did not finish within 60 s of the approval"
            assert "error" not in started, f"the flow raised: {started['error']!r}"
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run_id).state
            assert state is not None and state.is_completed(), f"run ended {state}"
            decision = started["state"].result()
            print(f"paused with its form after {paused - t0:.1f} s, browser {answered - paused:.1f} s, "
                  f"completed {time.monotonic() - answered:.1f} s later")
        finally:
            _end_flow(worker, started.get("id"))
    assert decision == Decision("plan", True, APPROVER, COMMENT, "approved")


@contextmanager
def prefect_ui_server(home: Path) -> Iterator[str]:
    """`prefect server start` (UI included) on a free port with its own PREFECT_HOME; yields the base URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # --port alone leaves the UI calling :4200 (its API URL defaults from PREFECT_SERVER_API_PORT), so say it.
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                        "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_UI_URL": base}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                   "--analytics-off", "--no-scheduler", "--no-late-runs"],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                  start_new_session=True)  # own process group: its uvicorn child goes with it
    try:
        t0 = time.monotonic()
        while not api_healthy(f"{base}/api"):
            if server.poll() is not None or time.monotonic() - t0 > 120:
                pytest.fail(f"prefect server on :{port} did not come up; {home / 'server.log'}:\n"
                            f"{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"prefect server with UI up on :{port} in {time.monotonic() - t0:.1f} s")
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_form(run_id: UUID, timeout_s: float) -> None:
    """Until the run is PAUSED *and* its form schema is stored: it pauses first (Prefect #11905)."""
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import read_flow_run_input

    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        keys = (state.state_details.run_input_keyset or {}) if state else {}
        if state and state.type.value == "PAUSED" and "schema" in keys \
                and read_flow_run_input(keys["schema"], flow_run_id=run_id) is not None:
            return
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not pause with its approval form within {timeout_s} s (state: {state})")


def _end_flow(worker: threading.Thread, run_id: UUID | None) -> None:
    """Leave no flow and no queued logs/events behind before the server goes: a still-paused flow
    would poll a dead server, and undelivered batches make the interpreter retry for a minute at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.flow_runs import resume_flow_run
    from prefect.logging.handlers import APILogWorker

    if worker.is_alive() and run_id is not None:  # the browser part failed: answer "no" so the flow ends
        try:
            resume_flow_run(run_id, run_input={"approve": False, "comment": "test cleanup"})
        except Exception as exc:  # not paused (any more): nothing to answer
            print(f"cleanup: could not resume {run_id}: {exc}", file=sys.stderr)
        worker.join(30)
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
