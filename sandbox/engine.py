"""A Docker engine for the sandbox: the one at DOCKER_HOST or the default socket, else one we start.

When nothing answers and this is Debian with root, install Debian's docker.io, docker-compose
and docker-registry and start `dockerd` in the background with the local registry as its
Docker Hub mirror, so that `./run pull` of Docker Hub names is served by images built here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import docker
from docker.errors import DockerException

from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.processes import SandboxError, start_detached, wait_until

REGISTRY_PORT = 5000
MIRROR = f"http://127.0.0.1:{REGISTRY_PORT}"
DEBIAN_PACKAGES = ["docker.io", "docker-compose", "docker-registry", "busybox-static", "debootstrap"]
NEEDED_COMMANDS = {"dockerd": "docker.io", "docker-compose": "docker-compose",
                   "docker-registry": "docker-registry", "busybox": "busybox-static",
                   "debootstrap": "debootstrap"}


def _client(timeout: int = 5) -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except DockerException:
        return None


def ensure_debian_packages() -> None:
    """Install the Debian packages whose commands are missing (root on Debian only)."""
    missing = sorted({pkg for cmd, pkg in NEEDED_COMMANDS.items()
                      if not shutil.which(cmd) and not Path("/usr/sbin", cmd).exists()})
    if not missing:
        return
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        raise SandboxError(f"missing commands from Debian packages {missing}; install them "
                           "(the sandbox installs them itself only as root on Debian)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def registry_mirrors(client: docker.DockerClient) -> list[str]:
    return client.info().get("RegistryConfig", {}).get("Mirrors") or []


def ensure_engine(home: SandboxHome) -> docker.DockerClient:
    """Return a client of a running engine, starting `dockerd` when none answers."""
    ensure_debian_packages()
    client = _client()
    if client is not None:
        return client
    if os.environ.get("DOCKER_HOST"):
        raise SandboxError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer; "
                           "unset it to let the sandbox start a local dockerd")
    log = home.logs / "dockerd.log"
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    pid = start_detached([dockerd, f"--registry-mirror={MIRROR}", "--host=unix:///var/run/docker.sock"], log)
    (home.root / "dockerd.pid").write_text(str(pid))
    wait_until(lambda: _client(2) is not None, 60, "dockerd", log)
    client = _client()
    assert client is not None
    return client
