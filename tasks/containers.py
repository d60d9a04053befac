"""The Mender stack's containers: the operator's `./run`, and state read by compose labels.

Containers are always found by the labels compose sets (`com.docker.compose.project`,
`com.docker.compose.service`), never by name: compose v1 and v2 name them differently.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from tasks.errors import ComposeCommandFailed, HealthGateFailed
from tasks.redaction import scrub, untrusted_environment

PROJECT = "menderproduction"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def run_compose(integration: Path, args: list[str], timeout: float = 600,
                env: dict[str, str] | None = None, untrusted: bool = False) -> str:
    """Run the operator's own `production/run` with `args`; return its output or raise.
    `untrusted`: the checkout is a release nobody approved yet, so it sees no secret of ours."""
    production = integration / "production"
    base = untrusted_environment(dict(os.environ)) if untrusted else os.environ
    try:
        proc = subprocess.run(["./run", *args], cwd=production, capture_output=True, text=True,
                              timeout=timeout, env=base | (env or {}))
    except subprocess.TimeoutExpired as exc:
        raise ComposeCommandFailed(f"`./run {' '.join(args)}` did not finish within {timeout:.0f} s",
                                   "check `docker info` and the daemon log") from exc
    if proc.returncode != 0:
        tail = scrub("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:]))
        raise ComposeCommandFailed(f"`./run {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}",
                                   f"run it by hand in {production} to see the whole output")
    return proc.stdout


def compose_services(integration: Path) -> list[str]:
    """The services the current checkout's compose files define (`./run config --services`)."""
    return sorted(run_compose(integration, ["config", "--services"]).split())


@dataclass(frozen=True)
class ServiceState:
    service: str
    container_id: str
    image: str
    status: str  # running, exited, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    restart_count: int

    @property
    def ok(self) -> bool:
        return self.status == "running" and self.health in (None, "healthy")


def project_states(client: docker.DockerClient, project: str = PROJECT) -> dict[str, ServiceState]:
    """Each service's container state, read through the Docker API by compose labels."""
    states: dict[str, ServiceState] = {}
    for c in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        attrs = c.attrs
        service = c.labels.get(SERVICE_LABEL, "?")
        states[service] = ServiceState(
            service=service, container_id=c.id, image=attrs["Config"]["Image"],
            status=attrs["State"]["Status"], health=(attrs["State"].get("Health") or {}).get("Status"),
            restart_count=attrs.get("RestartCount", 0))
    return states


@dataclass(frozen=True)
class HealthResult:
    states: dict[str, ServiceState]
    healthy_at: float  # time.monotonic() when every service was first healthy (stability window excluded)


def wait_until_healthy(client: docker.DockerClient, services: list[str], *, project: str = PROJECT,
                       timeout: float = 300, stability_window: float = 20,
                       poll: float = 0.5) -> HealthResult:
    """Block until every service runs, is healthy where it has a healthcheck, and stays so
    (same container, same restart count) for `stability_window` seconds."""
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    baseline: dict[str, tuple[str, int]] = {}
    while True:
        states = project_states(client, project)
        ready = all(s in states and states[s].ok for s in services)
        fingerprint = {s: (states[s].container_id, states[s].restart_count) for s in services if s in states}
        now = time.monotonic()
        if ready and stable_since is not None and fingerprint == baseline:
            if now - stable_since >= stability_window:
                return HealthResult(states, stable_since)
        elif ready:
            stable_since, baseline = now, fingerprint
            if stability_window <= 0:
                return HealthResult(states, stable_since)
        else:
            stable_since, baseline = None, {}
        if now >= deadline:
            bad = {s: (f"{states[s].status}/{states[s].health}" if s in states else "missing")
                   for s in services if s not in states or not states[s].ok}
            raise HealthGateFailed(f"services not healthy after {timeout:.0f} s: {bad}",
                                   "see `./run logs <service>` for the failing services")
        time.sleep(poll)


@dataclass
class CycleReport:
    services: dict[str, str]  # service -> final "status/health (image)"
    downtime_s: float
    step_seconds: dict[str, float]


def cycle_containers(client: docker.DockerClient, integration: Path, *, project: str = PROJECT,
                     health_timeout: float = 300, stability_window: float = 20,
                     log=lambda message: None) -> CycleReport:
    """stop, rm -f, up -d --remove-orphans through the operator's ./run, then the health gate.

    Pull first (`pull_images`): it needs no downtime. Downtime runs from the first stop until
    every service is healthy; services removed upstream (storage-proxy in 2.7) go as orphans."""
    services = compose_services(integration)
    steps: dict[str, float] = {}
    start = time.monotonic()
    for name, args in [("stop", ["stop"]), ("rm", ["rm", "-f"]), ("up", ["up", "-d", "--remove-orphans"])]:
        log(f"./run {' '.join(args)}")
        t = time.monotonic()
        run_compose(integration, args)
        steps[name] = time.monotonic() - t
    t = time.monotonic()
    health = wait_until_healthy(client, services, project=project, timeout=health_timeout,
                                stability_window=stability_window)
    steps["health"] = time.monotonic() - t
    return CycleReport({s: f"{st.status}/{st.health or '-'} ({st.image})" for s, st in health.states.items()},
                       downtime_s=health.healthy_at - start, step_seconds=steps)


def wait_for_engine(client: docker.DockerClient, timeout: float = 120, poll: float = 1) -> None:
    """Wait for the Docker engine to answer again (a restarted dockerd takes a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (docker.errors.DockerException, OSError) as exc:
            if time.monotonic() >= deadline:
                raise ComposeCommandFailed(f"the Docker engine did not answer for {timeout:.0f} s "
                                           f"({exc.__class__.__name__})",
                                           "start dockerd (`systemctl start docker`), then check `./run ps`") from exc
        time.sleep(poll)


def ensure_running(client: docker.DockerClient, integration: Path, *, project: str = PROJECT,
                   health_timeout: float = 300, stability_window: float = 5,
                   log=lambda message: None) -> list[str]:
    """After a failure before downtime the current version must still serve: start whatever is
    not running (`./run up -d` on the unchanged configuration), then the health gate. Returns
    the services that had to be started."""
    wait_for_engine(client)
    services = compose_services(integration)
    states = project_states(client, project)
    down = [s for s in services if s not in states or states[s].status != "running"]
    if down:
        log(f"not running: {', '.join(down)}; starting them with ./run up -d")
        run_compose(integration, ["up", "-d"])
    wait_until_healthy(client, services, project=project, timeout=health_timeout, stability_window=stability_window)
    return down


def pull_images(integration: Path, timeout: float = 1800) -> None:
    """`./run pull`: fetch the new images while the old version still serves."""
    run_compose(integration, ["pull"], timeout=timeout)
