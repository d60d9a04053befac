"""CLI errors that come from the Prefect server (session test server): one line on stderr."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from mender_upgrade.flows.cli import app


def test_approving_a_run_the_server_does_not_know_is_an_error_not_a_traceback(prefect_api) -> None:
    run_id = str(uuid.uuid4())
    result = CliRunner().invoke(app, ["approve", run_id])
    assert result.exit_code == 1, result.output
    assert f"error: there is no flow run {run_id} on this Prefect server" in result.stderr
    assert "mender-upgrade history" in result.stderr  # where to find the right id
    assert "Traceback" not in result.output and result.stdout == ""
