"""`serve` whose shutdown does not cancel runs that wait for approval.

Prefect's Runner (3.9.1) stops on SIGTERM with `astop()` -> `cancel_all()`, which kills every
child process it tracks and sets its run Cancelled("Runner is shutting down.") - paused ones
included (prefect/runner/runner.py `astop`, prefect/runner/_cancellation_manager.py
`cancel_all`). A paused run's process is what polls for the approval, so it has to stay alive:
here `cancel_all` cancels only the runs that are not paused and then waits for the paused ones to
end (approved and finished, rejected, or failed by their pause timeout) before the runner exits.
A second SIGTERM stops at once: the runs still paused are then cancelled, as Prefect would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import anyio
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import TerminationSignal
from prefect.logging import get_logger
from prefect.runner import Runner

SHUTDOWN_MESSAGE = "Runner is shutting down."  # the message Prefect's own cancel_all uses
FORCED_STOP_MESSAGE = "serve was stopped a second time while this run was running or waited for approval"


class ApprovalKeepingRunner(Runner):
    """A Runner whose graceful stop lets running runs and runs paused for approval finish instead of cancelling them."""

    _stop_now: asyncio.Event | None = None  # set by a second SIGTERM while waiting for paused runs

    async def cancel_all(self) -> None:
        self._stop_now = asyncio.Event()
        kept: list[UUID] = []
        # Private members of Runner (prefect pinned to 3.9.1): its in-flight runs and its cancel path.
        for flow_run_id in self._process_manager.flow_run_ids():
            flow_run = await self._client.read_flow_run(flow_run_id)
            # Running ones too: cancelling an upgrade mid container cycle kills it before it can
            # roll back, leaving the server half-upgraded.
            if flow_run.state is not None and (flow_run.state.is_paused() or flow_run.state.is_running()):
                kept.append(flow_run_id)
                self._logger.warning(
                    f"Not cancelling run '{flow_run.name}' ({flow_run_id}): it is {flow_run.state.name}. Shutdown "
                    "waits until it ends (approve/reject it, or its pause times out); SIGTERM again to stop now.")
                continue
            await self._cancel_run(flow_run, state_msg=SHUTDOWN_MESSAGE)
        await self._wait_until_ended(kept, self._stop_now)
        for flow_run_id in kept:  # only still running after a second SIGTERM
            # Cancelled, not left Paused: a Paused run whose process is gone would go Running on
            # "Resume" with nothing executing it, and a Cancel of it would stay Cancelling.
            await self._cancel_run(flow_run_id, state_msg=FORCED_STOP_MESSAGE)

    async def _wait_until_ended(self, flow_run_ids: list[UUID], stop_now: asyncio.Event) -> None:
        # Waiting here, inside astop(), keeps the runner's cancellation observer running, so a
        # Cancel from the UI still kills a kept run; the poller submits nothing once stopping.
        while not stop_now.is_set() and any(self._process_manager.get(i) is not None for i in flow_run_ids):
            with anyio.move_on_after(1):
                await stop_now.wait()

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        if self._stop_now is not None and self._loop is not None:
            self._logger.warning("Second SIGTERM: cancelling the runs that wait for approval and stopping.")
            self._loop.call_soon_threadsafe(self._stop_now.set)
            return
        super().handle_sigterm(*args, **kwargs)


def serve_keeping_paused_runs(deployments: Sequence[RunnerDeployment], pause_on_shutdown: bool = True) -> None:
    """`prefect.serve` with ApprovalKeepingRunner. `pause_on_shutdown` (schedules paused while no one
    serves them, re-activated on the next serve) stays on: a window missed while down must not
    start late when serve returns."""
    runner = ApprovalKeepingRunner(pause_on_shutdown=pause_on_shutdown)
    for deployment in deployments:
        runner.add_deployment(deployment)
        get_logger("mender-upgrade").info(f"serving {deployment.flow_name}/{deployment.name}")
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:  # as prefect.serve does
        get_logger("mender-upgrade").info(f"Received {type(exc).__name__}, shutting down...")
