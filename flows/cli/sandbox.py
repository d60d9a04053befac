"""`mender-upgrade sandbox up | down | status`: the throw-away Mender the tests and the demo use."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mender_upgrade.flows.cli.common import console, dim

app = typer.Typer(no_args_is_help=True, help="The throw-away Mender installation used by tests and the demo.")


def _print_status(info: dict) -> None:
    edition = " Enterprise" if info.get("enterprise") else ""
    table = Table(title=f"sandbox: Mender {info.get('version') or '-'}{edition}")
    table.add_column("service")
    table.add_column("state")
    services = info.get("services")
    if isinstance(services, dict):
        for name, state in sorted(services.items()):
            table.add_row(name, state)
    console.print(table)
    console.print(f"integration clone: {info.get('integration')}", markup=False)
    console.print(f"registry mirror answering: {info.get('registry')}; S3: {info.get('s3')}", markup=False)


@app.command("up")
def sandbox_up(version: str = typer.Option("2.6.4", "--version", help="Mender release to start"),
               artifacts_gib: float = typer.Option(0, "--artifacts-gib", min=0, max=64,
                                                   help="also write this many GiB of incompressible artifacts"),
               fleet: int = typer.Option(1, "--fleet", min=1, max=15,
                                         help="devices per tenant, as a multiple of the default 19"),
               enterprise: bool = typer.Option(False, "--enterprise",
                                               help="Mender Enterprise (config/enterprise.yml; real files only)")) -> None:
    """Start dockerd, the registry mirror and S3 if needed, build stand-ins, run Mender VERSION.

    MENDER_INTEGRATION_UPSTREAM=<path, URL or bundle of mendersoftware/integration> makes the
    operator's clone from that real repository; unset, from the generated fixture repository.
    With --enterprise the clone carries the Enterprise configuration as the docs make it."""
    from mender_upgrade.sandbox import stack
    stack.up(version, log=dim, artifacts_gib=artifacts_gib, fleet=fleet, enterprise=enterprise)
    _print_status(stack.status())


@app.command("down")
def sandbox_down() -> None:
    """Remove every container, network, volume and data folder the sandbox created."""
    from mender_upgrade.sandbox import stack
    for item in stack.down(log=dim):
        console.print(f"  removed {item}", markup=False)


@app.command("status")
def sandbox_status(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Which Mender version runs, each service's state, the clone, the registry and S3."""
    from mender_upgrade.sandbox import stack
    info = stack.status()
    if as_json:
        console.print_json(json.dumps(info))
    else:
        _print_status(info)
