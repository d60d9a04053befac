"""`mender-upgrade`: a thin CLI over the flows, the tasks and the sandbox."""

from __future__ import annotations

import json
import os

# Before anything imports Prefect: no server this tool talks to or starts sends telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import typer
from rich.console import Console
from rich.table import Table

from tasks.errors import UpgradeError

app = typer.Typer(no_args_is_help=True, help="Upgrade a self-hosted Mender Server safely.")
sandbox_app = typer.Typer(no_args_is_help=True, help="The throw-away Mender installation used by tests and the demo.")
app.add_typer(sandbox_app, name="sandbox")
console = Console()


def _register_areas() -> None:
    # Each area's commands live in their own module (one module per command area).
    from flows import cli_backup, cli_cleanup, cli_lock, cli_repo, cli_upgrade
    cli_backup.register(app)
    cli_repo.register(app)
    cli_cleanup.register(app)
    cli_upgrade.register(app)
    cli_lock.register(app)


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _print_status(info: dict) -> None:
    table = Table(title=f"sandbox: Mender {info.get('version') or '-'}")
    table.add_column("service")
    table.add_column("state")
    services = info.get("services")
    if isinstance(services, dict):
        for name, state in sorted(services.items()):
            table.add_row(name, state)
    console.print(table)
    console.print(f"integration clone: {info.get('integration')}")
    console.print(f"registry mirror answering: {info.get('registry')}; S3: {info.get('s3')}")


@sandbox_app.command("up")
def sandbox_up(version: str = typer.Option("2.6.4", help="Mender release to start")) -> None:
    """Start dockerd, the registry mirror and S3 if needed, build stand-ins, run Mender VERSION."""
    from sandbox import stack
    from sandbox.processes import SandboxError
    try:
        stack.up(version, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    except (SandboxError, UpgradeError) as exc:
        _fail(exc)
    _print_status(stack.status())


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Remove every container, network, volume and data folder the sandbox created."""
    from sandbox import stack
    for item in stack.down(log=console.print):
        console.print(f"  removed {item}")


@sandbox_app.command("status")
def sandbox_status(as_json: bool = typer.Option(False, "--json")) -> None:
    from sandbox import stack
    info = stack.status()
    if as_json:
        console.print_json(json.dumps(info))
    else:
        _print_status(info)


_register_areas()

if __name__ == "__main__":
    app()
