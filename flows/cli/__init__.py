"""`mender-upgrade`: a thin CLI over the flows, the tasks and the sandbox.

Each area's commands are module-level functions in this package; `mender_upgrade.flows.cli.errors` is the one
place that turns a failure into a message on stderr and an exit code.
"""

from __future__ import annotations

import os

# Before anything imports Prefect: no server this tool talks to or starts sends telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import typer  # noqa: E402

from mender_upgrade.flows.cli import backup, cleanup, lock, repo, sandbox, upgrade  # noqa: E402
from mender_upgrade.flows.cli.errors import EXIT_CODES_HELP, HandledGroup  # noqa: E402

app = typer.Typer(cls=HandledGroup, no_args_is_help=True, help="Upgrade a self-hosted Mender Server safely.",
                  epilog=EXIT_CODES_HELP)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version
        typer.echo(f"mender-upgrade {version('mender-upgrade')}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                          help="print the version and exit")) -> None:
    pass


for name, command in (("plan", repo.plan), ("repo-update", repo.repo_update), ("cleanup", cleanup.cleanup_command),
                      ("backup", backup.backup), ("restore", backup.restore), ("drill", backup.drill),
                      ("run", upgrade.run), ("approve", upgrade.approve), ("history", upgrade.history),
                      ("serve", upgrade.serve), ("notifications", upgrade.notifications), ("demo", upgrade.demo),
                      ("config-schema", upgrade.config_schema), ("unlock", lock.unlock)):
    app.command(name)(command)
app.add_typer(sandbox.app, name="sandbox")

if __name__ == "__main__":
    app()
