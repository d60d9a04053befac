"""The CLI's one error handler: expected failures go to stderr as one message, never a
traceback, with the documented exit code (0 done, 1 failed, 2 usage, 3 refused or stopped)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mender_upgrade.flows.cli import app

CLI = Path(sys.executable).parent / "mender-upgrade"


def _dead_api() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api"


def _commands(group, prefix: str = ""):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-group (typer's own click, not `click`'s classes)
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_option_and_argument_has_help_and_the_exit_codes_are_listed() -> None:
    missing = [f"{name} {param.name}" for name, command in _commands(typer.main.get_command(app))
               for param in command.params if not getattr(param, "help", None)]
    assert missing == []
    result = CliRunner().invoke(app, ["--help"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "Exit codes: 0 done; 1 failed" in text and "3 refused" in text


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("mender-upgrade 0.")


def test_a_pattern_in_an_error_is_printed_as_is_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "upgrade.yaml"
    config.write_text("compose_project: Bad Name\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "compose_project: must match ^[a-z0-9][a-z0-9_-]*$ (got 'Bad Name')" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_missing_config_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and f"config file {tmp_path / 'nope.toml'} does not exist" in result.stderr


@pytest.mark.parametrize("args,named", [(["--cron", "61 * * * *"], "--cron"),
                                        (["--timezone", "Mars/Olympus"], "--timezone")])
def test_serve_names_a_bad_cron_or_time_zone_before_touching_prefect(tmp_path: Path, args, named) -> None:
    result = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "any.yaml"), *args])
    assert result.exit_code == 2 and named in result.stderr and "Traceback" not in result.output


def test_prefect_server_down_is_one_line_not_a_traceback() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    api = _dead_api()
    with temporary_settings({PREFECT_API_URL: api}):
        result = CliRunner().invoke(app, ["history"])
    assert result.exit_code == 1, result.output
    assert f"error: the Prefect API at {api} does not answer" in " ".join(result.stderr.split())
    assert result.stdout == "" and "Traceback" not in result.output


def test_exclusive_options_are_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["cleanup", "--apply", "--restore", "x"])
    assert result.exit_code == 2 and "exclude each other" in result.stderr  # before anything runs


def test_the_installed_command_uses_stderr_and_the_exit_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLI), *args], env=env | extra, capture_output=True, text=True, timeout=120)

    down = cli("history", PREFECT_API_URL=_dead_api())
    assert down.returncode == 1 and "does not answer" in down.stderr and down.stdout == ""
    assert "Traceback" not in down.stderr
    missing = cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    zone = cli("serve", "--config", str(tmp_path / "nope.yaml"), "--timezone", "Mars/Olympus")
    assert zone.returncode == 2 and "unknown time zone 'Mars/Olympus'" in zone.stderr
    assert cli("no-such-command").returncode == 2
    assert cli("--version").stdout.startswith("mender-upgrade ")


def test_a_question_answered_no_is_stopped_and_exit_codes_pass_through() -> None:
    # Typer >= 0.23 raises its own click's classes (typer.Abort, typer.Exit), not `click`'s.
    from mender_upgrade.flows.cli.errors import EXIT_STOPPED, HandledGroup
    probe = typer.Typer(cls=HandledGroup)

    @probe.command()
    def ask() -> None:
        typer.confirm("Replace everything?", abort=True)

    @probe.command()
    def leave(code: int = typer.Option(..., help="exit code")) -> None:
        raise typer.Exit(code)

    no = CliRunner().invoke(probe, ["ask"], input="n\n")
    assert no.exit_code == EXIT_STOPPED, no.output
    assert "stopped: not confirmed: nothing was changed" in no.stderr and "Aborted" not in no.output
    assert CliRunner().invoke(probe, ["leave", "--code", "4"]).exit_code == 4
    usage = CliRunner().invoke(probe, ["leave", "--code", "x"])
    assert usage.exit_code == 2 and "Traceback" not in usage.output
