"""The README's fleet firewall, tested for real without touching this machine's own firewall: two
network namespaces joined by a veth pair. The server's namespace runs Debian's stock
/etc/nftables.conf (table inet filter), then exactly the README's `nft` lines, a real
`prefect server start` on 127.0.0.1:4200 (the tool's own, with its auth string) and Debian's nginx
with the README's server block on 443. The worker's namespace holds an address the rule allows
(10.0.10.5) and one it does not (10.0.20.5). No Docker, no fixed port outside the namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mender_upgrade.flows.runner import local_auth_string
from tests.test_tls_front import HOST_NAME, NGINX, _nginx_conf, _self_signed

REPO = Path(__file__).resolve().parents[1]
DEBIAN_NFTABLES_CONF = Path("/etc/nftables.conf")  # Debian's nftables package: table inet filter, chain input
ALLOWED, ALLOWED_SERVER = "10.0.10.5", "10.0.10.1"  # in the README rule's 10.0.10.0/24
OTHER, OTHER_SERVER = "10.0.20.5", "10.0.20.1"
CURL_TIMED_OUT, CURL_REFUSED = 28, 7

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip") or not DEBIAN_NFTABLES_CONF.exists()
    or not Path(NGINX).exists(),
    reason="needs root (network namespaces), nft, iproute2, Debian's /etc/nftables.conf and nginx")


def readme_firewall_lines() -> list[str]:
    """The `nft` commands of the README's fleet section, as an operator would paste them."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# the firewall:"))
    commands = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if not line.strip().startswith("#"):
            commands.append(line.strip())
    assert commands and all(c.startswith("nft ") for c in commands), commands
    return commands


def _in(namespace: str, *command: str, check: bool = True, env: dict | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True,
                          check=check, env=env, timeout=timeout)


@dataclass(frozen=True)
class Fleet:
    server: str  # namespace names
    worker: str
    auth: str
    ca_file: Path


def _curl(fleet: Fleet, source: str, server: str, port: int, auth: str | None) -> tuple[int, str]:
    """(curl's exit code, HTTP status) of POST /api/flows/filter from `source` to `server`:`port`."""
    url = f"https://{HOST_NAME}:{port}/api/flows/filter"
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", "3", "--max-time", "20",
               "--interface", source, "--resolve", f"{HOST_NAME}:{port}:{server}", "--cacert", str(fleet.ca_file),
               "-X", "POST", "-H", "Content-Type: application/json", "-d", "{}", url]
    done = _in(fleet.worker, *command, *(["-u", auth] if auth else []), check=False)
    return done.returncode, done.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    tag = f"{os.getpid() % 100000}"
    server, worker = f"mu-fw-server-{tag}", f"mu-fw-worker-{tag}"
    home = tmp_path_factory.mktemp("fw-home") / "prefect"
    front = tmp_path_factory.mktemp("fw-nginx")
    hosts = Path("/etc/netns") / worker / "hosts"  # `ip netns exec` mounts it over /etc/hosts
    nginx = None
    subprocess.run(["ip", "netns", "add", server], check=True)
    try:
        subprocess.run(["ip", "netns", "add", worker], check=True)
        # The veth pair is made inside the namespaces: nothing appears in this machine's own network.
        subprocess.run(["ip", "link", "add", f"vs{tag}", "netns", server, "type", "veth",
                        "peer", "name", f"vw{tag}", "netns", worker], check=True)
        for namespace, device, addresses in ((server, f"vs{tag}", (ALLOWED_SERVER, OTHER_SERVER)),
                                             (worker, f"vw{tag}", (ALLOWED, OTHER))):
            for address in addresses:
                _in(namespace, "ip", "addr", "add", f"{address}/24", "dev", device)
            _in(namespace, "ip", "link", "set", device, "up")
            _in(namespace, "ip", "link", "set", "lo", "up")
        _in(server, "nft", "-f", str(DEBIAN_NFTABLES_CONF))  # flushes and loads the server namespace's ruleset only
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        _in(server, sys.executable, "-c", "import sys; from pathlib import Path; from mender_upgrade.flows.runner import "
            "ensure_local_server; ensure_local_server(Path(sys.argv[1]), 4200, log=lambda m: None)", str(home),
            env=env, timeout=120)
        cert, key = _self_signed(front)
        conf = _nginx_conf(front, cert, key)  # the README's block as written: 443, proxy to 127.0.0.1:4200
        nginx = subprocess.Popen(["ip", "netns", "exec", server, NGINX, "-p", str(front), "-c", str(conf),
                                  "-e", str(front / "error.log")], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(f"127.0.0.1 localhost\n{ALLOWED_SERVER} {HOST_NAME}\n")
        fleet = Fleet(server, worker, local_auth_string(home), cert)
        deadline = time.monotonic() + 20
        while _curl(fleet, ALLOWED, ALLOWED_SERVER, 443, fleet.auth) != (0, "200"):
            assert nginx.poll() is None and time.monotonic() < deadline, (front / "error.log").read_text()
            time.sleep(0.2)
        yield fleet
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=20)
        if (home / "server.pid").exists():
            os.killpg(int((home / "server.pid").read_text()), 15)
        shutil.rmtree(hosts.parent, ignore_errors=True)
        for namespace in (worker, server):  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)


def test_the_readme_rule_lets_the_workers_network_in_and_keeps_others_out(fleet: Fleet, tmp_path):
    # Before the rule: the other address reaches the server too (else the test below proves nothing).
    assert _curl(fleet, OTHER, OTHER_SERVER, 443, fleet.auth) == (0, "200")
    for command in readme_firewall_lines():
        done = _in(fleet.server, "sh", "-c", command, check=False)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    # A worker's address: through nginx to the server on its loopback, authenticated or 401.
    assert _curl(fleet, ALLOWED, ALLOWED_SERVER, 443, fleet.auth) == (0, "200")
    assert _curl(fleet, ALLOWED, ALLOWED_SERVER, 443, None) == (0, "401")
    # Another address: dropped, the connection times out.
    code, status = _curl(fleet, OTHER, OTHER_SERVER, 443, fleet.auth)
    assert (code, status) == (CURL_TIMED_OUT, "000")
    # 4200 is dropped even from the worker's address (the server listens on loopback only anyway).
    assert _curl(fleet, ALLOWED, ALLOWED_SERVER, 4200, fleet.auth)[0] == CURL_TIMED_OUT
    # The tool's own command, as a worker's operator runs it, from the allowed address.
    tool = str(Path(sys.executable).parent / "mender-upgrade")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_API_URL": f"https://{HOST_NAME}/api", "PREFECT_API_AUTH_STRING": fleet.auth,
        "SSL_CERT_FILE": str(fleet.ca_file), "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    done = _in(fleet.worker, tool, "history", "--json", check=False, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
