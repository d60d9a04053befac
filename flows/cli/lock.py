"""`mender-upgrade unlock HOST [--force]`: free a host's upgrade lock left by a dead run."""

from __future__ import annotations

import typer
from rich.markup import escape

from mender_upgrade.flows import lock
from mender_upgrade.flows.cli.common import console, prefect_api

HOST = typer.Argument(..., metavar="HOST", help="the host id whose lock to free (as in the run's settings)")
FORCE = typer.Option(False, "--force", help="free it even while an upgrade run of the host is RUNNING or PAUSED "
                                            "(only when its process is gone)")


def unlock(host: str = HOST, force: bool = FORCE) -> None:
    """Free HOST's upgrade lock when the run holding it died (crash, kill, server restart)."""
    with prefect_api():  # starts the local server if none is configured
        status = lock.release_stale_lock(host, force)
    if not status.exists:
        console.print(f"no lock {status.name} exists: no upgrade of {escape(host)} ever ran on this Prefect server")
    elif not status.held:
        console.print(f"{status.name} holds no slot: nothing to free")
    else:
        forced = f" (forced past {len(status.live_runs)} live run(s))" if status.live_runs else ""
        console.print(f"[green]freed[/green] {status.name}{forced}: the next upgrade of {escape(host)} can start")

