"""Stopping `serve` (SIGTERM) must not cancel a run paused for approval. A real serve process
(tests/serve_shutdown_app.py, our mender_upgrade.deployments.serving path) against the session's test server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL

from mender_upgrade.deployments.serving import FORCED_STOP_MESSAGE
from tests.serve_shutdown_app import FLOW_NAME

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """`probe()`'s first truthy value, polled until a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.3)


class Served:
    """One serve process with its own deployment; its output in a log file."""

    def __init__(self, log: Path, plain_prefect: bool = False) -> None:
        self.deployment = f"probe-{uuid.uuid4().hex[:8]}"
        self.log = log
        env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                            "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PYTHONPATH": str(REPO)}
        args = [sys.executable, "tests/serve_shutdown_app.py", self.deployment]
        with log.open("wb") as out:
            # Own session: pytest's terminal signals must not reach it; the test signals it itself.
            self.process = subprocess.Popen(args + (["--plain-prefect-serve"] if plain_prefect else []), cwd=REPO,
                                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def start_run(self, client: SyncPrefectClient) -> FlowRun:
        def deployment_id() -> uuid.UUID | None:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{self.output()}")
            try:
                return client.read_deployment_by_name(f"{FLOW_NAME}/{self.deployment}").id
            except Exception:  # not registered yet
                return None
        return client.create_flow_run_from_deployment(wait_for(deployment_id, 60, "the served deployment"))

    def stop(self) -> None:
        """Kill what is left of this serve's process group (it and its flow-run processes)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


@pytest.fixture
def client(prefect_api) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def served(prefect_api, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(plain_prefect: bool = False) -> Served:
        started.append(Served(tmp_path / f"serve-{len(started)}.log", plain_prefect))
        return started[-1]
    yield start
    for s in started:
        s.stop()


def state_of(client: SyncPrefectClient, run: FlowRun) -> StateType | None:
    state = client.read_flow_run(run.id).state
    return state.type if state else None


def paused(client: SyncPrefectClient, run: FlowRun) -> bool:
    return state_of(client, run) == StateType.PAUSED


def paused_run_then_sigterm(client: SyncPrefectClient, serve):
    """Start a run, wait until it pauses for approval, SIGTERM serve, see it keep the run."""
    run = serve.start_run(client)
    wait_for(lambda: paused(client, run), 60, "the run to pause")
    serve.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "Not cancelling run" in serve.output(), 30, "the runner to keep the paused run")
    return run


def test_sigterm_leaves_a_paused_run_paused_and_resumable(client: SyncPrefectClient, served) -> None:
    serve = served()
    run = paused_run_then_sigterm(client, serve)
    assert serve.process.poll() is None, "serve exits only after its paused run has ended"
    assert state_of(client, run) == StateType.PAUSED

    # The run's process is alive: an approval resumes it and it finishes; then serve exits.
    resume_flow_run(run.id)
    wait_for(lambda: state_of(client, run) == StateType.COMPLETED, 60, "the resumed run to complete")
    assert serve.process.wait(60) == 0, serve.output()
    assert client.read_deployment(run.deployment_id).paused, "pause_on_shutdown pauses the schedules"


def test_second_sigterm_cancels_the_paused_run_and_stops(client: SyncPrefectClient, served) -> None:
    serve = served()
    run = paused_run_then_sigterm(client, serve)
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 0, serve.output()
    state = client.read_flow_run(run.id).state
    assert (state.type, state.message) == (StateType.CANCELLED, FORCED_STOP_MESSAGE)


def test_plain_prefect_serve_cancels_the_paused_run(client: SyncPrefectClient, served) -> None:
    """What serve_keeping_paused_runs exists for; fails when a Prefect upgrade changes it."""
    serve = served(plain_prefect=True)
    run = serve.start_run(client)
    wait_for(lambda: paused(client, run), 60, "the run to pause")
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(60) == 0
    state = client.read_flow_run(run.id).state
    assert (state.type, state.message) == (StateType.CANCELLED, "Runner is shutting down.")
