"""The local server the tool starts requires its auth string: a real `prefect server start` on a
random 127.0.0.1 port (no Docker). Unauthenticated reads, runs, resumes and block reads get 401;
the tool's own commands work; something else answering on the port is not taken for ours."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from mender_upgrade.flows.cli import common as cli_common
from mender_upgrade.flows.cli import app
from mender_upgrade.flows.runner import (ALLOW_UNAUTHENTICATED_ENV, ApiNotOurs, ensure_local_server, local_auth_string,
                          require_safe_api)
from tests.local_prefect import local_prefect_server


@pytest.fixture(scope="module")
def local_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("mender-upgrade-home") / "prefect"
    with local_prefect_server(home) as api:
        yield api, home


def _call(api: str, method: str, path: str, auth: str | None = None, body: dict | None = None) -> int:
    credentials = tuple(auth.split(":", 1)) if auth else None  # HTTP basic auth is what Prefect checks
    return httpx.request(method, f"{api}{path}", json=body if method != "GET" else None, auth=credentials,
                         timeout=10).status_code


def test_the_auth_string_is_generated_once_and_kept_0600(local_server):
    _, home = local_server
    path = home / "api-auth-string"
    assert path.stat().st_mode & 0o777 == 0o600
    assert local_auth_string(home) == path.read_text().strip() and len(path.read_text().strip()) > 40


def test_unauthenticated_requests_get_401_and_authenticated_ones_work(local_server):
    api, home = local_server
    auth = local_auth_string(home)
    run = str(uuid4())
    requests = [("POST", "/flow_runs/filter", {}), ("POST", "/flows/filter", {}), ("GET", f"/flow_runs/{run}", None),
                ("POST", f"/flow_runs/{run}/resume", {"run_input": {"approve": True}}),
                ("POST", f"/deployments/{run}/create_flow_run", {}), ("POST", "/block_documents/filter", {}),
                ("POST", "/flow_runs/", {"flow_id": run}), ("POST", f"/flow_runs/{run}/set_state", {})]
    for method, path, body in requests:
        assert _call(api, method, path, None, body) == 401, path
        assert _call(api, method, path, "admin:wrong", body) == 401, path
    assert _call(api, "POST", "/flow_runs/filter", auth) == 200
    assert _call(api, "POST", "/block_documents/filter", auth) == 200


def test_the_tools_own_commands_work(local_server, monkeypatch):
    api, home = local_server
    monkeypatch.setattr(cli_common, "PREFECT_HOME", home)
    monkeypatch.setattr(cli_common, "LOCAL_PORT", int(api.split(":")[-1].split("/")[0]))
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_API_AUTH_STRING}):
        result = CliRunner().invoke(app, ["history", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == []
        refused = CliRunner().invoke(app, ["approve", str(uuid4())])
    assert refused.exit_code == 1 and "there is no flow run" in " ".join(refused.output.split())


def test_a_wrong_auth_string_is_a_clear_error_naming_it(local_server, monkeypatch):
    """The operator's CLI with PREFECT_API_URL and a wrong PREFECT_API_AUTH_STRING: refused by the
    server before anything is read or changed; one message naming the setting, no traceback."""
    api, _ = local_server
    wrong = "mender-upgrade:not-the-servers-string"
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: wrong}):
        refused = CliRunner().invoke(app, ["history", "--json"])
    output = " ".join(refused.output.split())
    assert refused.exit_code == 1, refused.output
    assert "refused our credentials (HTTP 401)" in output and "PREFECT_API_AUTH_STRING" in output
    assert "Traceback" not in output and "not-the-servers-string" not in output


def test_a_server_with_another_auth_string_is_not_taken_for_ours(local_server, tmp_path):
    api, _ = local_server
    other_home = tmp_path / "other"
    with pytest.raises(ApiNotOurs, match="refuses our auth string"):
        ensure_local_server(other_home, int(api.split(":")[-1].split("/")[0]), log=lambda m: None)


def test_a_process_merely_answering_on_the_port_is_not_taken_for_ours(tmp_path):
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def do_POST(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    impostor = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ApiNotOurs, match="answers without authentication"):
            ensure_local_server(tmp_path / "home", impostor.server_port, log=lambda m: None)
    finally:
        impostor.shutdown()
        impostor.server_close()


def test_a_remote_api_must_be_authenticated_unless_opted_out(monkeypatch):
    monkeypatch.delenv(ALLOW_UNAUTHENTICATED_ENV, raising=False)
    with pytest.raises(ApiNotOurs, match="not on this machine and no credentials"):
        require_safe_api("http://192.0.2.10:4200/api", None, None)
    require_safe_api("http://127.0.0.1:4200/api", None, None)  # loopback: this machine's own
    monkeypatch.setenv(ALLOW_UNAUTHENTICATED_ENV, "1")
    require_safe_api("http://192.0.2.10:4200/api", None, None)
