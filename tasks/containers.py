"""The Mender stack's containers: the operator's `./run`, and state read by compose labels.

Containers are always found by the labels compose sets (`com.docker.compose.project`,
`com.docker.compose.service`), never by name: compose v1 and v2 name them differently.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker
import requests
import yaml

from mender_upgrade.tasks import service_health
from mender_upgrade.tasks.errors import ComposeCommandFailed, HealthGateFailed
from mender_upgrade.tasks.redaction import scrub, untrusted_environment

PROJECT = "menderproduction"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
GATEWAY_SERVICE = "mender-api-gateway"
ONEOFF_LABEL = "com.docker.compose.oneoff"  # "True" on `run` containers (compose v1 and v2)


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


HealthTest = tuple[str, ...]  # an image's HEALTHCHECK test: ("CMD", ...), ("CMD-SHELL", "...")


@dataclass(frozen=True)
class ServiceState:
    service: str
    container_id: str
    image: str
    status: str  # running, exited, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    restart_count: int
    ip: str | None = None  # on the compose network; reachable from the host on Linux
    health_path: str | None = None  # probed on :8080 (the compose label, else the table)
    env: dict[str, str] = field(default_factory=dict)
    health_test: HealthTest = ()  # the container's HEALTHCHECK test, () without one
    own_test_passed: bool = False  # health "starting": the gate ran health_test itself, and it passed

    @property
    def ok(self) -> bool:
        return self.status == "running" and (self.health in (None, "healthy")
                                             or (self.health == "starting" and self.own_test_passed))

    def describe(self) -> str:
        if self.health is None:
            return self.status
        passed = " (its HEALTHCHECK test passed when the gate ran it)" if self.own_test_passed else ""
        return f"{self.status}/{self.health}{passed}"


def project_states(client: docker.DockerClient, project: str = PROJECT) -> dict[str, ServiceState]:
    """Each service's container state, read through the Docker API by compose labels."""
    states: dict[str, ServiceState] = {}
    # ignore_removed: compose's `up --force-recreate` removes old containers between the list and the inspect.
    for c in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}, ignore_removed=True):
        attrs = c.attrs
        service = c.labels.get(SERVICE_LABEL, "?")
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        ip = next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)
        env = dict(e.split("=", 1) for e in attrs["Config"].get("Env") or [] if "=" in e)
        states[service] = ServiceState(
            service=service, container_id=c.id, image=attrs["Config"]["Image"],
            status=attrs["State"]["Status"], health=(attrs["State"].get("Health") or {}).get("Status"),
            restart_count=attrs.get("RestartCount", 0), ip=ip,
            health_path=service_health.health_path(service, c.labels), env=env,
            health_test=tuple((attrs["Config"].get("Healthcheck") or {}).get("Test") or ()))
    return states


def _exec_argv(test: HealthTest) -> list[str] | None:
    """The command of a HEALTHCHECK test as `docker exec` runs it (None: no test to run)."""
    if test[:1] == ("CMD",) and len(test) > 1:
        return list(test[1:])
    if test[:1] == ("CMD-SHELL",) and len(test) == 2:
        return ["/bin/sh", "-c", test[1]]
    return None


def own_health_test_passes(client: docker.DockerClient, state: ServiceState,
                           timeout: float = service_health.PROBE_TIMEOUT_S) -> bool:
    """Run the container's own HEALTHCHECK test now, as Docker would, bounded by `timeout`.
    Docker runs it first one interval after the start (the gui image's: 8 s) and says
    `starting` until then; the test's exit status is the verdict Docker would record."""
    argv = _exec_argv(state.health_test)
    if argv is None:
        return False
    outcome: list[int] = []

    def run() -> None:
        try:
            outcome.append(client.containers.get(state.container_id).exec_run(argv).exit_code)
        except (docker.errors.DockerException, requests.RequestException):
            outcome.append(-1)  # gone or stopped meanwhile, or the engine is (re)starting: not healthy

    worker = threading.Thread(target=run, daemon=True)  # a hung test must not hold the gate
    worker.start()
    worker.join(timeout)
    return outcome == [0]


def _with_own_tests(client: docker.DockerClient, states: dict[str, ServiceState], services: list[str],
                    passed: set[str]) -> dict[str, ServiceState]:
    """Services whose Docker health is still `starting` and whose own test passed (now, or
    earlier in this container's life: Docker too counts one pass as healthy until `retries`
    failures), marked so. `passed` holds the container ids and is updated."""
    out = dict(states)
    for s in services:
        st = states.get(s)
        if st is None or st.status != "running" or st.health != "starting":
            continue
        if st.container_id in passed or own_health_test_passes(client, st):
            passed.add(st.container_id)
            out[s] = replace(st, own_test_passed=True)
    return out


def _probe(states: dict[str, ServiceState], services: list[str]) -> dict[str, service_health.Answer]:
    """Each running service's health endpoint (a container with no address fails unasked)."""
    probed = [s for s in services if s in states and states[s].ok and states[s].health_path]
    answers = service_health.probe_health({s: (ip, path) for s in probed
                                          if (ip := states[s].ip) and (path := states[s].health_path)})
    return answers | {s: service_health.Answer(None, "no address on the compose network", 0.0)
                      for s in probed if not states[s].ip}


def _smoke(states: dict[str, ServiceState]) -> list[service_health.RouteCheck] | str:
    """The gateway smoke, or why it cannot be tried (no gateway container or address)."""
    gateway = states.get(GATEWAY_SERVICE)
    if gateway is None or not gateway.ok or not gateway.ip:
        return f"{GATEWAY_SERVICE} is not running with an address"
    # 3.2+ traefik answers only the names in ALLOWED_HOSTS; older gateways any name.
    allowed = gateway.env.get("ALLOWED_HOSTS", "").replace('"', "").split(",")[0].strip() or None
    deployments = states.get("mender-deployments")
    storage_host, why_not = service_health.storage_host_behind_gateway(deployments.env if deployments else {})
    return service_health.smoke_gateway(gateway.ip, allowed, storage_host, why_not)


def running_services(client: docker.DockerClient, integration: Path, project: str = PROJECT) -> list[str]:
    """The services of the current compose configuration (`./run config --services`) that have
    a running service container: no orphans of removed services, no one-off `run` containers."""
    configured = set(compose_services(integration))
    running = {c.labels.get(SERVICE_LABEL) for c in client.containers.list(
        filters={"label": f"{PROJECT_LABEL}={project}", "status": "running"}, ignore_removed=True)
        if c.labels.get(ONEOFF_LABEL, "False") != "True"}
    return sorted(configured & running)


@dataclass(frozen=True)
class HealthResult:
    states: dict[str, ServiceState]
    healthy_at: float  # time.monotonic() when every service first served (stability window excluded)
    answers: dict[str, service_health.Answer]  # the last health probe of each probed service
    smoke: list[service_health.RouteCheck]  # empty when the smoke was not asked for


def wait_until_healthy(client: docker.DockerClient, services: list[str], *, project: str = PROJECT,
                       timeout: float = 300, stability_window: float = 20, poll: float = 0.2,
                       smoke: bool = False) -> HealthResult:
    """Block until every service runs, is healthy where its image has a healthcheck (Docker
    says so, or, while Docker still says `starting`, the same test passed when the gate ran it),
    answers 2xx on its internal health endpoint where it has one, and stays so (same container,
    same restart count) for `stability_window` seconds; with `smoke`, the gateway must also
    answer users and devices (`service_health.GATEWAY_ROUTES`)."""
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    served_at: float | None = None
    baseline: dict[str, tuple[str, int]] = {}
    first_seen: dict[str, tuple[str, int]] = {}
    checks: list[service_health.RouteCheck] | str = []
    own_tests_passed: set[str] = set()
    while True:
        states = _with_own_tests(client, project_states(client, project), services, own_tests_passed)
        for s in services:
            if s in states:
                first_seen.setdefault(s, (states[s].container_id, states[s].restart_count))
        running = all(s in states and states[s].ok for s in services)
        answers = _probe(states, services) if running else {}
        ready = running and all(a.ok for a in answers.values())
        fingerprint = {s: (states[s].container_id, states[s].restart_count) for s in services if s in states}
        now = time.monotonic()
        if not ready or (stable_since is not None and fingerprint != baseline):
            stable_since, served_at, baseline = (now, None, fingerprint) if ready else (None, None, {})
        elif stable_since is None:
            stable_since, baseline = now, fingerprint
        if stable_since is not None and smoke and served_at is None:
            checks = _smoke(states)
            if not isinstance(checks, str) and all(c.ok for c in checks):
                served_at = time.monotonic()
        if stable_since is not None and (served_at is not None or not smoke) \
                and now - stable_since >= stability_window:
            return HealthResult(states, max(stable_since, served_at or stable_since), answers,
                                checks if isinstance(checks, list) else [])
        if now >= deadline:
            raise HealthGateFailed(_not_serving(timeout, services, states, answers, first_seen,
                                                checks if smoke and stable_since is not None else None),
                                   "run `./run logs <service>` in the clone's production folder for each service named")
        time.sleep(poll)


def _not_serving(timeout: float, services: list[str], states: dict[str, ServiceState],
                 answers: dict[str, service_health.Answer], first_seen: dict[str, tuple[str, int]],
                 checks: list[service_health.RouteCheck] | str | None) -> str:
    """The gate's failure: each failing service with what it answered."""
    lines = []
    for s in services:
        st = states.get(s)
        if st is None:
            lines.append(f"{s}: no container")
            continue
        what = st.describe()
        cid, restarts = first_seen.get(s, (st.container_id, st.restart_count))
        if cid != st.container_id:
            what += ", container replaced during the gate"
        elif st.restart_count > restarts:
            what += f", restarted {st.restart_count - restarts} times during the gate"
        answer = answers.get(s)
        if answer is not None and not answer.ok:
            lines.append(f"{s}: {what}; GET http://{st.ip}:{service_health.HEALTH_PORT}{st.health_path} "
                         f"answered {answer}")
        elif not st.ok or what != st.describe():
            lines.append(f"{s}: {what}")
    if isinstance(checks, str):
        lines.append(f"gateway smoke not tried: {checks}")
    elif checks:
        lines += [f"gateway: {c}" for c in checks if not c.ok]
    if not lines:
        lines.append("every service serves, but not yet for the whole stability window")
    failing = [line.split(":", 1)[0] for line in lines if line.split(":", 1)[0] in services]
    if isinstance(checks, list) and any(not c.ok for c in checks):
        failing.append(GATEWAY_SERVICE)
    logs = f"\n  read `./run logs {' '.join(failing)}` for why" if failing else ""
    return f"services not healthy after {timeout:.0f} s:\n  " + "\n  ".join(lines) + logs


CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
# Images Mender publishes itself: every release retags them, and the documented procedure
# stops all of them together so that old and new services never run side by side.
MENDER_IMAGE_PREFIXES = ("mendersoftware/", "docker.io/mendersoftware/", "registry.mender.io/")


def is_mender_image(image: str) -> bool:
    return image.startswith(MENDER_IMAGE_PREFIXES)


def config_hashes(integration: Path) -> dict[str, str]:
    """Each service's compose configuration hash (`./run config --hash=*`), the value compose
    writes into the `com.docker.compose.config-hash` label of the container it creates."""
    out: dict[str, str] = {}
    for line in run_compose(integration, ["config", "--hash=*"]).splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


@dataclass(frozen=True)
class RunningService:
    image: str            # the image name the container was created from
    image_id: str         # the image the container runs
    config_hash: str      # the compose configuration it was created with


@dataclass(frozen=True)
class CyclePlan:
    recreate: list[str]   # stopped, removed and created again from the new configuration
    keep: list[str]       # third-party services whose image and configuration do not change


def plan_cycle(services: list[str], new_hashes: dict[str, str], running: dict[str, RunningService],
               local_image_ids: dict[str, str]) -> CyclePlan:
    """Which services the cycle recreates. Mender's own services always cycle together; a
    third-party service (mongo, minio, nats, the traefik gateway, redis) keeps running when its
    container already runs the configuration (compose's config hash) and the image (the id
    the image name now points to, after `./run pull`) of the new release."""
    keep = [s for s in services
            if s in running and not is_mender_image(running[s].image)
            and new_hashes.get(s) == running[s].config_hash
            and local_image_ids.get(running[s].image) == running[s].image_id]
    return CyclePlan(recreate=[s for s in services if s not in keep], keep=keep)


def running_containers(client: docker.DockerClient, project: str = PROJECT) -> dict[str, RunningService]:
    """The running containers of `project` by service, with what decides whether they change."""
    out: dict[str, RunningService] = {}
    for c in client.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"}, ignore_removed=True):
        if c.labels.get(ONEOFF_LABEL, "False") == "True":
            continue
        attrs = c.attrs
        out[c.labels.get(SERVICE_LABEL, "?")] = RunningService(
            image=attrs["Config"]["Image"], image_id=attrs["Image"],
            config_hash=c.labels.get(CONFIG_HASH_LABEL, ""))
    return out


def local_image_ids(client: docker.DockerClient, names: set[str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name in names:
        try:
            ids[name] = client.images.get(name).id
        except docker.errors.ImageNotFound:
            continue
    return ids


def cycle_commands(plan: CyclePlan, services: list[str], *, running: set[str],
                   closed: bool, waited: AbstractSet[str] = frozenset()) -> list[tuple[str, list[str]]]:
    """The cycle's `./run` commands, named: one `stop` of everything that changes and still
    runs, together (in the quiet period the writers are stopped already, so often only the
    gateway of a closed hop, or nothing), then one `up` that creates the changing services
    again and removes orphans. `--no-deps`: a plain `up` would also recreate the kept
    gateway, because compose recreates every service whose dependencies were recreated;
    `--force-recreate` replaces the stopped containers (their removal included) in the same
    call. Closed: the gateway is stopped and not started again. `waited`: services others
    depend on with `service_healthy`, started in a call of their own (`up_commands`)."""
    stop = [s for s in plan.recreate if s in running]
    if closed and GATEWAY_SERVICE in running:
        stop.append(GATEWAY_SERVICE)
    commands = [("stop", ["stop", *stop])] if stop else []
    if plan.recreate:
        return commands + up_commands(["up", "-d", "--no-deps", "--force-recreate", "--remove-orphans"],
                                      plan.recreate, waited)
    return commands + [("up", ["up", "-d", "--no-deps", "--remove-orphans", *services])]


@dataclass
class CycleReport:
    services: dict[str, str]  # service -> final "status/health, health path answer (image)"
    downtime_s: float
    step_seconds: dict[str, float]
    gateway: list[str]  # the smoke's route checks, as read
    kept: list[str]  # services left running: image and configuration unchanged
    gate_s: float = 0.0       # of downtime_s: the health gate's wait until all were healthy
    healthy_at: float = 0.0   # time.monotonic() when every service was first healthy


def cycle_containers(client: docker.DockerClient, integration: Path, *, project: str = PROJECT,
                     health_timeout: float = 300, stability_window: float = 20, smoke: bool = True,
                     closed: bool = False, log=lambda message: None) -> CycleReport:
    """Stop and remove every service that changes (all of Mender's together), create them from
    the new configuration, remove orphans, then the health gate.

    Pull first (`pull_images`): it needs no downtime. Mongo, minio, nats and the gateway keep
    running when neither their image nor their configuration changes: recreating them only
    adds downtime. A recreated minio starts in a call of its own (`up_commands`): compose
    would hold its dependents until minio's first health check, a minute in the real files.
    Downtime runs from the first stop until every service is healthy; services removed
    upstream (storage-proxy in 2.7) go as orphans.

    `closed` (a hop before the last): the gateway stays stopped, so that nothing from outside
    reaches the new services before the next hop's cycle (a rollback of a later hop restores
    the backup taken before the first, and would lose what was written in between); the gate
    checks every other service, without the gateway smoke."""
    hashes = config_hashes(integration)  # names every service too: one compose call less
    services = sorted(hashes)
    running = running_containers(client, project)
    plan = plan_cycle(services, hashes, running, local_image_ids(client, {r.image for r in running.values()}))
    if closed and GATEWAY_SERVICE in services:
        plan = CyclePlan(recreate=[s for s in plan.recreate if s != GATEWAY_SERVICE],
                         keep=[s for s in plan.keep if s != GATEWAY_SERVICE])
        services = [s for s in services if s != GATEWAY_SERVICE]
        smoke = False
        log(f"{GATEWAY_SERVICE} stays stopped until the last hop's cycle: nothing from outside writes in between")
    if plan.keep:
        log(f"kept running (image and configuration unchanged): {', '.join(plan.keep)}")
    waited = health_waited(run_compose(integration, ["config"])) if plan.recreate else set()
    steps: dict[str, float] = {}
    start = time.monotonic()
    for name, args in cycle_commands(plan, services, running=set(running), closed=closed, waited=waited):
        log(f"./run {' '.join(args)}")
        t = time.monotonic()
        run_compose(integration, args)
        steps[name] = time.monotonic() - t
    t = time.monotonic()
    health = wait_until_healthy(client, services, project=project, timeout=health_timeout,
                                stability_window=stability_window, smoke=smoke)
    steps["health"] = time.monotonic() - t
    return CycleReport({s: _summary(st, health.answers.get(s)) for s, st in health.states.items()},
                       downtime_s=health.healthy_at - start, step_seconds=steps,
                       gateway=[str(c) for c in health.smoke], kept=plan.keep,
                       gate_s=health.healthy_at - t, healthy_at=health.healthy_at)


def _summary(state: ServiceState, answer: service_health.Answer | None) -> str:
    served = f", {state.health_path} {answer}" if answer is not None else ""
    own = " (own HEALTHCHECK test passed)" if state.own_test_passed else ""
    return f"{state.status}/{state.health or '-'}{own}{served} ({state.image})"


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
                   health_timeout: float = 300, stability_window: float = 5, smoke: bool = True,
                   log=lambda message: None) -> list[str]:
    """After a failure before downtime the current version must still serve: start whatever is
    not running (`start_services`: `./run up -d --no-deps` on the unchanged configuration,
    without compose's minute of waiting for a restarted minio), then the health gate. Returns
    the services that had to be started."""
    wait_for_engine(client)
    services = compose_services(integration)
    states = project_states(client, project)
    down = [s for s in services if s not in states or states[s].status != "running"]
    if down:
        log(f"not running: {', '.join(down)}; starting them with ./run up -d --no-deps")
        start_services(integration, down)
    wait_until_healthy(client, services, project=project, timeout=health_timeout, stability_window=stability_window,
                       smoke=smoke)
    return down


def _config_services(config_yaml: str) -> dict[str, dict]:
    """Service -> its definition in `./run config` output."""
    return {name: svc or {} for name, svc in ((yaml.safe_load(config_yaml) or {}).get("services") or {}).items()}


def config_images(config_yaml: str) -> dict[str, str | None]:
    """Service -> its image name in `./run config` output (None: built, no image named)."""
    return {name: svc.get("image") for name, svc in _config_services(config_yaml).items()}


def health_waited(config_yaml: str) -> set[str]:
    """The services another service depends on with `condition: service_healthy` in `./run
    config` output (minio from 2.6's storage-proxy and 2.7's deployments on)."""
    waited: set[str] = set()
    for svc in _config_services(config_yaml).values():
        depends = svc.get("depends_on") or {}
        if isinstance(depends, dict):
            waited |= {name for name, how in depends.items() if (how or {}).get("condition") == "service_healthy"}
    return waited


def up_commands(args: list[str], services: list[str], waited: AbstractSet[str]) -> list[tuple[str, list[str]]]:
    """`./run up -d --no-deps ...` of `services` as one or two named commands. compose waits
    for the Docker health of a `service_healthy` dependency it starts in the same call, and
    minio's first check runs a minute after its start (the 2.x images): so the waited-on
    services start in one call and their dependents in a second one, which does not wait.
    The health gate after it sees every service serve, minio's own check included."""
    first = [s for s in services if s in waited]
    rest = [s for s in services if s not in waited]
    if not first or not rest:
        return [("up", [*args, *services])]
    return [("up", [*args, *first]), ("up dependents", [*args, *rest])]


def start_services(integration: Path, services: list[str], *extra: str) -> None:
    """Start (or create) `services` of the current configuration without compose's wait for
    a dependency's first health check (`up_commands`); `extra`: more `up` options."""
    waited = health_waited(run_compose(integration, ["config"]))
    for _, args in up_commands(["up", "-d", "--no-deps", *extra], services, waited):
        run_compose(integration, args)


def release_images(integration: Path) -> dict[str, str]:
    """Service -> the image name the current checkout's compose files give it (`./run config`)."""
    return {name: image for name, image in config_images(run_compose(integration, ["config"])).items() if image}


def pull_images(integration: Path, client: docker.DockerClient | None = None, timeout: float = 1800,
                log=lambda message: None) -> None:
    """`./run pull`: fetch the new images while the old version still serves.

    An image the pull cannot fetch is used as it is when an image of that name is present
    (Enterprise images come from `registry.mender.io`, which serves only after `docker login`;
    air-gapped hosts `docker load` theirs); an image neither fetched nor present fails the
    pull, named."""
    try:
        run_compose(integration, ["pull"], timeout=timeout)
        return
    except ComposeCommandFailed as failed:
        pull_error = failed
    client = client or docker.from_env()
    named = release_images(integration)
    present = local_image_ids(client, set(named.values()))
    # compose v2 stops pulling at the first failure (v1 pulls the rest; neither skips a registry
    # it cannot reach, `--ignore-pull-failures` or not): each image still absent on its own.
    for service in sorted(s for s, image in named.items() if image not in present):
        try:
            run_compose(integration, ["pull", service], timeout=timeout)
        except ComposeCommandFailed as failed:
            pull_error = failed
    present = local_image_ids(client, set(named.values()))
    missing = sorted({image for image in named.values() if image not in present})
    if missing:
        raise ComposeCommandFailed(f"`./run pull` fetched no image {', '.join(missing)} and none of that name is "
                                   f"present: {pull_error.message}",
                                   "log in to the registry that serves it (Enterprise: `docker login "
                                   "registry.mender.io` with the Mender Enterprise credentials) or `docker load` "
                                   "it, then run again")
    log(f"`./run pull` could not fetch every image; all {len(present)} images the release names are present "
        "locally and are used as they are")
