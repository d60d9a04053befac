"""`sandbox up | down | status`: the whole throw-away Mender installation, start to end."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import git
from docker.errors import NotFound
from pymongo import MongoClient

from mender_upgrade.sandbox import images, standin_catalogue
from mender_upgrade.sandbox.engine import ensure_engine
from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.integration_fixture import PRODUCTION_BRANCH, create_operator_clone, create_upstream
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.sandbox.real_upstream import UPSTREAM_ENV, clone_operator, configured_upstream, release_files
from mender_upgrade.sandbox.registry import registry_answers, start_registry, stop_registry
from mender_upgrade.sandbox.releases import RUNNABLE_VERSIONS, Release
from mender_upgrade.sandbox.s3 import S3Endpoint, start_s3, stop_s3
from mender_upgrade.sandbox.seed import MAX_FLEET, SeedSummary, seed_artifacts, seed_bulk_artifacts, seed_mongo
from mender_upgrade.tasks.versions import Version
from mender_upgrade.tasks.containers import (PROJECT, PROJECT_LABEL, compose_services, project_states, run_compose,
                                             start_services, wait_until_healthy)

SANDBOX_LABEL = "org.mender-upgrade.sandbox"
EXTERNAL_VOLUMES = ["mender-artifacts", "mender-db"]
MAX_ARTIFACTS_GIB = 64


@dataclass
class Sandbox:
    home: SandboxHome
    client: docker.DockerClient
    s3: S3Endpoint
    upstream: Path | str  # the fixture repository, or the real upstream (path or URL)
    integration: Path
    version: str
    real_upstream: bool = False  # the clone is of the real integration repository, not the fixture
    enterprise: bool = False  # the clone carries production/config/enterprise.yml

    def mongo_url(self) -> str:
        return f"mongodb://{mongo_address(self.client)}:27017/"

    def mongo(self) -> MongoClient:
        return MongoClient(self.mongo_url(), serverSelectionTimeoutMS=10000)


def mongo_address(client: docker.DockerClient, project: str = PROJECT) -> str:
    """The mender-mongo container's address on the compose network (reachable from the host)."""
    state = project_states(client, project).get("mender-mongo")
    if state is None:
        raise SandboxError("no mender-mongo container is running")
    networks = client.containers.get(state.container_id).attrs["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]


def _refuse_foreign_stack(client: docker.DockerClient) -> None:
    # The sandbox owns the fixed project name and the unprefixed external volumes: never adopt
    # (and later delete) ones it did not create.
    for name in EXTERNAL_VOLUMES:
        try:
            vol = client.volumes.get(name)
        except NotFound:
            continue
        if SANDBOX_LABEL not in (vol.attrs.get("Labels") or {}):
            raise SandboxError(f"volume {name!r} exists and was not created by the sandbox; "
                               "refusing to touch a real installation's data")


def up(version: str = "2.6.4", home: SandboxHome | None = None, log=print,
       stability_window: float = 3, artifacts_gib: float = 0, fleet: int = 1,
       enterprise: bool = False) -> Sandbox:
    """Bring the sandbox up with the old stack at `version` running, healthy and seeded (with
    `artifacts_gib` GiB of incompressible artifact files on top of the small ones, and `fleet`
    times the default devices per tenant); Mender Enterprise when `enterprise`.

    With `MENDER_INTEGRATION_UPSTREAM` set, the operator's clone is made from that real
    integration repository (`real_upstream.py`) and every image its compose files name is
    built as a stand-in; unset, from the generated fixture repository.
    """
    if not 1 <= fleet <= MAX_FLEET:
        raise SandboxError(f"fleet {fleet} is out of range; give 1 to {MAX_FLEET} (the mongo stand-in "
                           "slows down sharply past ~1 000 documents per collection)")
    if not 0 <= artifacts_gib <= MAX_ARTIFACTS_GIB:
        raise SandboxError(f"artifacts_gib {artifacts_gib} is out of range; give 0 to {MAX_ARTIFACTS_GIB} (GiB)")
    real_upstream = configured_upstream()
    if enterprise and real_upstream is None:
        raise SandboxError(f"enterprise: the Enterprise sandbox runs on the real repository's files only; "
                           f"set {UPSTREAM_ENV} (e.g. to the shared mendersoftware-integration.bundle)")
    if real_upstream is None and version not in images.RUNNABLE_VERSIONS:
        raise SandboxError(f"version {version!r} has no stand-in images; choose one of {images.RUNNABLE_VERSIONS}")
    home = home or SandboxHome.default()
    home.logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    client = ensure_engine(home)
    _refuse_foreign_stack(client)
    real_images: list[str] = []
    staged = home.root / "staged-clone" / "integration"
    if real_upstream is not None:
        # Clone and read the compose files before anything is started or replaced: a bad
        # upstream, version or image leaves the running sandbox (if any) as it was.
        try:
            clone_operator(real_upstream, staged, version, enterprise)
            real_images = _real_stack_images(staged, version, enterprise)
        except BaseException:
            shutil.rmtree(staged.parent, ignore_errors=True)
            raise
    if project_states(client):
        log("a sandbox stack is already running: taking it down first")
        down(home, log=log, keep_servers=True)
    start_registry(home)
    s3 = start_s3(home)
    built_log: list[str] = []
    names = images.build_images(client, log=lambda m: (built_log.append(m), log(m)), extra_images=real_images)
    built = sum(m.startswith("building stand-in") for m in built_log)
    images.publish_to_mirror(client, names, log=log)
    for stale in ("upstream", "operator"):
        shutil.rmtree(home.run / stale, ignore_errors=True)
    integration = home.run / "operator" / "integration"
    if real_upstream is not None:
        upstream: Path | str = real_upstream
        integration.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(integration)
        shutil.rmtree(staged.parent, ignore_errors=True)
    else:
        upstream = create_upstream(home.run / "upstream" / "integration.git")
        create_operator_clone(upstream, integration, version)
    for name in EXTERNAL_VOLUMES:
        client.volumes.create(name, labels={SANDBOX_LABEL: "true"})
    home.write_state(version=version, upstream=str(upstream), integration=str(integration), dirty=False,
                     real_upstream=real_upstream is not None, enterprise=enterprise,
                     production_head=git.Repo(integration).head.commit.hexsha)
    edition = f"{version} Enterprise" if enterprise else version
    log(f"starting Mender {edition} with the clone's own ./run up -d")
    services = compose_services(integration)
    # minio in a call of its own: a plain `./run up -d` waits a minute for its first health check
    # (the real files' `service_healthy`); the gate below waits for every service to serve.
    start_services(integration, services)
    wait_until_healthy(client, services, timeout=180, stability_window=stability_window)
    sandbox = Sandbox(home, client, s3, upstream, integration, version, real_upstream is not None, enterprise)
    summary = seed(sandbox, fleet)
    if artifacts_gib:
        t = time.monotonic()
        summary.artifacts |= seed_bulk(sandbox, artifacts_gib)
        log(f"wrote {artifacts_gib:g} GiB of artifacts in {time.monotonic() - t:.1f} s")
    home.write_state(seeded_old_clients=summary.inventory_old_clients, artifacts_gib=artifacts_gib, fleet=fleet)
    elapsed = time.monotonic() - t0
    log(f"sandbox up: Mender {edition}, {len(services)} services healthy, in {elapsed:.1f} s")
    with open(home.logs / "up-times.log", "a") as times:  # kept by `down`: start-time history
        times.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} up {edition} {elapsed:.1f} s, "
                    f"{built} images built\n")
    return sandbox


def _real_stack_images(staged: Path, version: str, enterprise: bool) -> list[str]:
    """The images the clone's compose files name (`./run config`) at `version` and at every later
    runnable release (the upgrade targets, whose `./run pull` the registry mirror serves as Docker
    Hub would); every one needs a stand-in."""
    found = standin_catalogue.compose_images(run_compose(staged, ["config"]))
    later = [v for v in RUNNABLE_VERSIONS if Version.parse(v) > Version.parse(version)]
    for target in release_files(staged, later, enterprise):
        found |= {f"{target.name}/{service}": image for service, image in
                  standin_catalogue.compose_images(run_compose(target, ["config"])).items()}
    shutil.rmtree(staged.parent / "releases", ignore_errors=True)
    missing = standin_catalogue.missing_standins(found, set(images.MONGO_VERSIONS))
    if missing:
        raise SandboxError(f"the compose files of {UPSTREAM_ENV}={configured_upstream()!r} name images with "
                           f"no stand-in: {', '.join(missing)}; nothing was started")
    return sorted(set(found.values()))


def seed(sandbox: Sandbox, fleet: int = 1) -> SeedSummary:
    per_tenant = Release(sandbox.version).minor < "3.6"  # deviceauth <= 3.4 keeps a DB per tenant
    with sandbox.mongo() as mongo:
        summary = seed_mongo(mongo, per_tenant_databases=per_tenant, fleet=fleet)
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    summary.artifacts = seed_artifacts(minio)
    return summary


def seed_bulk(sandbox: Sandbox, gib: float) -> dict[str, str]:
    """Add `gib` GiB of incompressible artifacts to the running sandbox's storage volume."""
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    return seed_bulk_artifacts(minio, gib)


def reset(home: SandboxHome | None = None, log=print, stability_window: float = 3) -> Sandbox:
    """Bring the running sandbox back to the state `up` left it in, without rebuilding or
    re-cloning: the production branch at the commit `up` made, the tool's marker refs gone,
    every service of that commit recreated where its image or configuration differ (orphans of a
    newer release removed), the database and the artifact volume seeded again. For the tests'
    dirty cases: seconds instead of a full `up`'s clone, image checks and registry pushes."""
    t0 = time.monotonic()
    sandbox = attach(home)
    state = sandbox.home.read_state()
    if state.get("artifacts_gib"):
        raise SandboxError("reset: this sandbox holds bulk artifacts; run `mender-upgrade sandbox up` instead")
    repo = git.Repo(sandbox.integration)
    repo.git.worktree("prune")
    repo.git.checkout("--quiet", "--force", PRODUCTION_BRANCH)
    repo.git.reset("--quiet", "--hard", state["production_head"])
    repo.git.clean("--quiet", "-d", "--force")
    for ref in repo.git.for_each_ref("--format=%(refname)", "refs/mender-upgrade/").split():
        repo.git.update_ref("-d", ref)
    services = compose_services(sandbox.integration)
    start_services(sandbox.integration, services, "--remove-orphans")
    wait_until_healthy(sandbox.client, services, timeout=180, stability_window=stability_window)
    with sandbox.mongo() as mongo:
        for name in mongo.list_database_names():
            if name not in ("admin", "local", "config"):
                mongo.drop_database(name)
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    wiped = minio.exec_run(["sh", "-c", "find /export -mindepth 1 -delete"])
    if wiped.exit_code:
        raise SandboxError(f"reset: could not empty the artifact volume: {wiped.output.decode(errors='replace')}")
    summary = seed(sandbox, state.get("fleet", 1))
    sandbox.home.write_state(dirty=False, seeded_old_clients=summary.inventory_old_clients)
    log(f"sandbox reset: Mender {sandbox.version}, {len(services)} services healthy, in {time.monotonic() - t0:.1f} s")
    return sandbox


def mark_dirty(sandbox: Sandbox) -> None:
    """Tell the test fixtures this sandbox was changed (upgraded, rolled back) and needs a fresh up."""
    sandbox.home.write_state(dirty=True)


def attach(home: SandboxHome | None = None) -> Sandbox:
    """The running sandbox, as `up` left it."""
    home = home or SandboxHome.default()
    state = home.read_state()
    if "integration" not in state:
        raise SandboxError("no sandbox is up; run `mender-upgrade sandbox up`")
    upstream = state["upstream"] if "://" in state["upstream"] else Path(state["upstream"])
    return Sandbox(home, docker.from_env(), S3Endpoint(**state["s3"]), upstream,
                   Path(state["integration"]), state["version"], state.get("real_upstream", False),
                   state.get("enterprise", False))


def down(home: SandboxHome | None = None, log=print, keep_servers: bool = False) -> list[str]:
    """Remove what the sandbox created: containers, networks, volumes, registry and S3 data, temp dirs."""
    home = home or SandboxHome.default()
    removed: list[str] = []
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException:
        client = None
    if client is not None:
        for label in [f"{PROJECT_LABEL}={PROJECT}", SANDBOX_LABEL]:
            for c in client.containers.list(all=True, filters={"label": label}):
                c.remove(force=True, v=True)
                removed.append(f"container {c.name}")
        for label in [f"{PROJECT_LABEL}={PROJECT}", SANDBOX_LABEL]:
            for n in client.networks.list(filters={"label": label}):
                n.remove()
                removed.append(f"network {n.name}")
        for v in client.volumes.list(filters={"label": SANDBOX_LABEL}):
            v.remove(force=True)
            removed.append(f"volume {v.name}")
    if not keep_servers:
        stop_registry(home)
        stop_s3(home)
        if home.run.exists():
            shutil.rmtree(home.run)
            removed.append(f"directory {home.run}")
    log(f"sandbox down: removed {len(removed)} items")
    return removed


def _running_version(state: dict) -> str | None:
    """The release the clone is on now (it moves when an upgrade runs), else the one `up` started."""
    try:
        from mender_upgrade.tasks.repository import current_version, open_integration
        return current_version(open_integration(Path(state["integration"])))
    except Exception:  # no clone (sandbox down) or not readable: fall back to what `up` recorded
        return state.get("version")


def status(home: SandboxHome | None = None) -> dict:
    home = home or SandboxHome.default()
    state = home.read_state()
    out: dict = {"version": _running_version(state), "enterprise": state.get("enterprise", False),
                 "integration": state.get("integration"),
                 "registry": registry_answers(), "s3": state.get("s3", {}).get("url")}
    try:
        client = docker.from_env(timeout=5)
        out["services"] = {s: f"{st.status}/{st.health or '-'}" for s, st in project_states(client).items()}
    except docker.errors.DockerException as exc:
        out["services"] = f"docker unreachable: {exc.__class__.__name__}"
    return out
