"""The README's fleet setup, tested: a real `prefect server start` requiring its auth string on a
random 127.0.0.1 port, behind Debian's nginx terminating TLS with the README's own server block
(deployments/nginx-prefect.conf) and a self-signed certificate. No Docker; nothing is installed
here (scripts/dev.sh installs nginx)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from mender_upgrade.flows.runner import local_auth_string
from tests.local_prefect import local_prefect_server
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SERVER_BLOCK = REPO / "deployments" / "nginx-prefect.conf"
HOST_NAME = "prefect.test"  # in the certificate; the tests connect by IP, also in its subjectAltName
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(),
                                reason="Debian's nginx is not installed (scripts/dev.sh test installs nginx-light)")


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{SERVER_BLOCK.name} no longer has exactly one {old!r}"
    return text.replace(old, new)


@dataclass(frozen=True)
class TlsFront:
    url: str  # https://127.0.0.1:<port>
    ca_file: Path
    auth: str
    port: int


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", f"/CN={HOST_NAME}",
                    "-addext", f"subjectAltName=DNS:{HOST_NAME},IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _nginx_conf(directory: Path, cert: Path, key: Path, tls_port: int | None = None, api_port: int | None = None) -> Path:
    """The README's server block with this test's certificate and name; without ports it listens on
    443 and proxies to 127.0.0.1:4200 as written (inside a network namespace of its own)."""
    server = SERVER_BLOCK.read_text()
    replacements = [("server_name prefect.example.com;", f"server_name {HOST_NAME};"),
                    ("/etc/ssl/prefect/fullchain.pem", str(cert)), ("/etc/ssl/prefect/privkey.pem", str(key))]
    if tls_port is not None:
        replacements.append(("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"))
    if api_port is not None:
        replacements.append(("http://127.0.0.1:4200;", f"http://127.0.0.1:{api_port};"))
    for old, new in replacements:
        server = _replace_once(server, old, new)
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
    # Started as root, the workers would switch to nobody, who cannot enter pytest's 0700 tmp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
                    f"error_log {directory / 'error.log'};\nevents {{ worker_connections 64; }}\n"
                    f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n"
                    f"{textwrap.indent(server, '    ')}}}\n")
    return conf


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"nginx did not listen on {port}: {log.read_text() if log.exists() else ''}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tls_front(tmp_path_factory) -> Iterator[TlsFront]:
    home = tmp_path_factory.mktemp("prefect-home")
    with local_prefect_server(home) as api:
        front, tls_port = tmp_path_factory.mktemp("nginx"), free_port()
        cert, key = _self_signed(front)
        conf = _nginx_conf(front, cert, key, tls_port, urlsplit(api).port)
        nginx = subprocess.Popen([NGINX, "-p", str(front), "-c", str(conf), "-e", str(front / "error.log")],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_for_port(tls_port, nginx, front / "error.log")
            yield TlsFront(f"https://127.0.0.1:{tls_port}", cert, local_auth_string(home), tls_port)
        finally:
            nginx.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            nginx.wait(timeout=20)


def test_the_readme_shows_the_tested_server_block():
    readme = (REPO / "README.md").read_text()
    assert textwrap.indent(SERVER_BLOCK.read_text(), "    ") in readme


def test_without_credentials_the_api_answers_401_through_tls(tls_front: TlsFront):
    answer = httpx.post(f"{tls_front.url}/api/flows/filter", json={}, verify=ssl.create_default_context(cafile=tls_front.ca_file), timeout=10)
    assert answer.status_code == 401
    user, password = tls_front.auth.split(":", 1)
    answer = httpx.post(f"{tls_front.url}/api/flows/filter", json={}, auth=(user, password),
                        verify=ssl.create_default_context(cafile=tls_front.ca_file), timeout=10)
    assert answer.status_code == 200 and answer.json() == []


def _client_env(front: TlsFront, home: Path) -> dict[str, str]:
    """A worker's or an operator's environment: the https URL, the auth string, the CA."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_API_URL": f"{front.url}/api", "PREFECT_API_AUTH_STRING": front.auth,
                  "SSL_CERT_FILE": str(front.ca_file), "HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def test_the_tools_own_command_works_through_tls(tls_front: TlsFront, tmp_path):
    tool = str(Path(sys.executable).parent / "mender-upgrade")
    done = subprocess.run([tool, "history", "--json"], env=_client_env(tls_front, tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    without_ca = _client_env(tls_front, tmp_path)
    del without_ca["SSL_CERT_FILE"]  # the system's CAs do not know the self-signed certificate
    refused = subprocess.run([tool, "history", "--json"], env=without_ca, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert "does not trust" in refused.stderr and "SSL_CERT_FILE" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_flow_run_and_its_events_reach_the_server_through_tls(tls_front: TlsFront, tmp_path):
    """Task-run events go over the proxied websocket (/api/events/in): the Upgrade/Connection headers."""
    code = ("from prefect import flow, task\n"
            "@task(name='tls-probe-task')\ndef probe(): return 1\n"
            "@flow(name='tls-probe')\ndef main(): return probe()\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], env=_client_env(tls_front, tmp_path), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    user, password = tls_front.auth.split(":", 1)
    query = {"filter": {"event": {"prefix": ["prefect.task-run."]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}}
    deadline = time.monotonic() + 30
    while True:
        answer = httpx.post(f"{tls_front.url}/api/events/filter", json=query, auth=(user, password),
                            verify=ssl.create_default_context(cafile=tls_front.ca_file), timeout=10)
        assert answer.status_code == 200, answer.text
        events = {e["event"] for e in answer.json()["events"]}
        if "prefect.task-run.Completed" in events or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "prefect.task-run.Completed" in events, events


def test_plain_http_to_the_tls_port_fails(tls_front: TlsFront):
    answer = httpx.post(f"http://127.0.0.1:{tls_front.port}/api/flows/filter", json={}, timeout=10)
    assert answer.status_code == 400 and "plain HTTP request was sent to HTTPS port" in answer.text
