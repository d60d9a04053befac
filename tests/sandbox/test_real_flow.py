"""The upgrade flow on the real `mendersoftware/integration` files (MENDER_INTEGRATION_UPSTREAM):
the operator's clone of the real repository, its own `./run`, a stand-in under every image name."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime
from uuid import UUID

import git
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

from mender_upgrade.flows.runner import history
from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.integration_fixture import (OPERATOR_GATEWAY_HOST, OPERATOR_MINIO_SECRET_KEY,
                                                      OPERATOR_STORAGE_HOST)
from mender_upgrade.sandbox.seed import artifact_files
from mender_upgrade.sandbox.standin_catalogue import compose_images
from mender_upgrade.tasks import service_health
from mender_upgrade.tasks.containers import compose_services, project_states, pull_images, run_compose, wait_until_healthy
from mender_upgrade.tasks.errors import ComposeCommandFailed
from mender_upgrade.tasks.mongo import server_info
from mender_upgrade.tasks.service_health import call
from tests.flowrun import everything_recorded, flow_settings, report_of, run_flow
from tests.test_serve_shutdown import wait_for
from tests.realfiles import needs_upstream
from tests.sandbox.test_real_stack import _ip, _raw_https

pytestmark = pytest.mark.sandbox


class _GatewayProber:
    """From its own thread, every 0.3 s, what a user gets from 127.0.0.1:443: (wall time, whether
    the gateway answered at all; any HTTP status counts)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = call("127.0.0.1", 443, "/api/management/v1/useradm/auth/login", method="POST", tls=True,
                          host=OPERATOR_GATEWAY_HOST, timeout=1)
            self.samples.append((time.time(), answer.status is not None))
            self._stop.wait(0.3)

    def __enter__(self) -> "_GatewayProber":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _gate_passes(sb: stack.Sandbox) -> None:
    """Every service healthy as the tool's gate sees it. A recreated minio's Docker health says
    `starting` for its first minute (its first check runs 60 s after the start; the cycle no
    longer waits for it): the gate runs that same check in the container meanwhile."""
    wait_until_healthy(sb.client, compose_services(sb.integration), timeout=30, stability_window=0, smoke=False)


def _cycle_task_runs(run_id: str) -> list[tuple[datetime, datetime]]:
    """(start, end) of each cycle-containers task run of the flow run, in order."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="cycle-containers")))
    return sorted((r.start_time, r.end_time) for r in runs if r.start_time and r.end_time)


@needs_upstream
def test_real_files_upgrade_2_6_4_to_3_0_2_through_the_flow(prefect_api, real_upstream):
    sb = stack.up("2.6.4")
    try:
        assert "storage-proxy" in project_states(sb.client)
        with _GatewayProber() as prober:
            state, run_id, asked = run_flow(flow_settings(sb, "3.0.2", health_timeout_s=150),
                                            answer=lambda d: (True, "go ahead"))
        report = report_of(run_id)
        assert state.is_completed(), f"{state.message}\n{report}"
        result = state.result()
        assert result["outcome"] == "completed" and result["hops"] == ["2.7.2", "3.0.2"]
        # One approval for the whole plan, through the API, recorded with who and why; it showed
        # both hops and what each changes in the operator's templates.
        assert result["approvals"][0]["approver"] == "alice" and result["approvals"][0]["comment"] == "go ahead"
        assert len(asked) == 1 and "2.6.4 → 2.7.2" in asked[0] and "2.7.2 → 3.0.2" in asked[0]
        assert "Template drift" in asked[0]
        assert all(part in report for part in ("**completed**", "sha256", "downtime", "alice"))
        assert any(h["id"] == run_id and h["outcome"] == "completed" for h in history())
        repo = git.Repo(sb.integration)
        # The tool's markers are no tags: the release tag names what runs (the GUI's version).
        assert repo.git.describe("--tags", "--abbrev=0") == "3.0.2"
        assert not [t.name for t in repo.tags if "upgrade" in t.name]
        assert len([r for r in repo.git.for_each_ref("refs/mender-upgrade/pre-upgrade").splitlines()]) == 2
        # What runs is what the real 3.0.2 files name; storage-proxy is gone.
        states = project_states(sb.client)
        assert {s: st.image for s, st in states.items()} == compose_images(run_compose(sb.integration, ["config"]))
        assert "storage-proxy" not in states
        _gate_passes(sb)
        # The 2.7 alias patch: the storage name devices hold in artifact links is an alias of the
        # gateway, which routes it to minio; a seeded artifact comes back byte for byte.
        gateway = sb.client.containers.get(states["mender-api-gateway"].container_id)
        aliases = {a for n in gateway.attrs["NetworkSettings"]["Networks"].values() for a in n.get("Aliases") or []}
        assert OPERATOR_STORAGE_HOST in aliases
        path, (content, _, _) = next((p, f) for p, f in artifact_files(2604).items()
                                     if p.startswith("mender-artifact-storage/"))
        with _raw_https(443, f"/{path}", OPERATOR_STORAGE_HOST) as body:
            assert hashlib.sha256(body).hexdigest() == hashlib.sha256(content).hexdigest()
        # The last hop's gate reached storage through the gateway under the storage name (before
        # it the gateway stays closed: one quiet period, no smoke through it).
        def storage_checks() -> list[str] | None:  # the run's logs reach the server asynchronously
            lines = [ln for ln in everything_recorded(run_id)[1].splitlines()
                     if ln.startswith("gateway: artifact storage")]
            return lines or None
        checks = wait_for(storage_checks, 60, "the gate's storage smoke in the run's logs")
        assert len(checks) == 1 and all(ln.endswith(", ok") for ln in checks), checks
        # Every log line, artifact, stored parameter and event of the run is free of the secrets.
        lines, recorded = everything_recorded(run_id)
        assert lines > 5
        assert sb.s3.secret_key not in recorded and OPERATOR_MINIO_SECRET_KEY not in recorded
        # One quiet period across the hops: from the end of the first hop's cycle until the last
        # hop's cycle began, the gateway never answered a user (the prober saw it serve before
        # and after, so it could have).
        (_, first_end), (last_start, _) = [(a.timestamp(), b.timestamp()) for a, b in _cycle_task_runs(run_id)]
        between = [answered for t, answered in prober.samples if first_end <= t <= last_start]
        assert between and not any(between), f"{sum(between)} of {len(between)} probes answered between the hops"
        assert any(answered for t, answered in prober.samples if t < first_end)
        assert prober.samples[-1][1]
    finally:
        stack.down()


@needs_upstream
def test_real_files_upgrade_3_6_5_to_3_7_11_moves_mongo_to_5_0_with_fcv(prefect_api, real_upstream):
    sb = stack.up("3.6.5")
    try:
        assert project_states(sb.client)["mender-mongo"].image == "mongo:4.4"
        state, run_id, _ = run_flow(flow_settings(sb, "3.7.11", health_timeout_s=150), answer=lambda d: (True, "ok"))
        assert state.is_completed(), f"{state.message}\n{report_of(run_id)}"
        states = project_states(sb.client)
        assert {s: st.image for s, st in states.items()} == compose_images(run_compose(sb.integration, ["config"]))
        assert states["mender-mongo"].image == "mongo:5.0"
        _gate_passes(sb)
        with sb.mongo() as mongo:
            assert server_info(mongo).feature_compatibility_version == "5.0"
        assert git.Repo(sb.integration).git.describe("--tags", "--abbrev=0") == "3.7.11"
    finally:
        stack.down()


@needs_upstream
def test_real_files_upgrade_3_6_5_to_3_7_11_enterprise(prefect_api, real_upstream):
    sb = stack.up("3.6.5", enterprise=True)
    try:
        old = project_states(sb.client)
        assert old["mender-tenantadm"].image == "registry.mender.io/mendersoftware/tenantadm:mender-3.6.5"
        state, run_id, _ = run_flow(flow_settings(sb, "3.7.11", health_timeout_s=150), answer=lambda d: (True, "ok"))
        report = report_of(run_id)
        assert state.is_completed(), f"{state.message}\n{report}"
        # registry.mender.io serves no pull here (as on a host without `docker login`): the run
        # goes on with the 3.7.11 images present and says so.
        wait_for(lambda: "images the release names are present locally" in everything_recorded(run_id)[1], 60,
                 "the dry run's pull warning in the run's logs")
        states = project_states(sb.client)
        named = compose_images(run_compose(sb.integration, ["config"]))
        assert {s: st.image for s, st in states.items()} == named
        assert named["mender-tenantadm"] == "registry.mender.io/mendersoftware/tenantadm:mender-3.7.11"
        assert states["mender-mongo"].image == "mongo:5.0"
        _gate_passes(sb)
        # every API service, Enterprise's included, serves its internal health path
        targets = {s: (_ip(sb.client.containers.get(st.container_id)), path) for s, st in states.items()
                   if (path := service_health.health_path(s, sb.client.containers.get(st.container_id).labels))}
        assert {"mender-tenantadm", "mender-auditlogs", "mender-devicemonitor"} <= set(targets)
        answers = service_health.probe_health(targets)
        assert all(a.status == 200 for a in answers.values()), answers
        with sb.mongo() as mongo:
            assert server_info(mongo).feature_compatibility_version == "5.0"
        repo = git.Repo(sb.integration)
        assert repo.git.describe("--tags", "--abbrev=0") == "3.7.11"
        assert (sb.integration / "production/config/enterprise.yml").is_file() and not repo.is_dirty()
        _absent_image_fails_the_pull_named(sb)
    finally:
        stack.down()


def _absent_image_fails_the_pull_named(sb: stack.Sandbox) -> None:
    """An image registry.mender.io does not serve here and no local image carries: `./run pull`
    fails naming it, with the `docker login` hint."""
    clone = sb.integration.parent / "clone-with-an-absent-image"
    git.Repo(sb.integration).git.worktree("add", "--quiet", "--detach", str(clone))
    try:
        compose = clone / "docker-compose.enterprise.yml"
        compose.write_text(compose.read_text().replace("tenantadm:mender-3.7.11", "tenantadm:mender-3.7.99"))
        with pytest.raises(ComposeCommandFailed, match=r"(?s)fetched no image registry\.mender\.io/mendersoftware/"
                                                       r"tenantadm:mender-3\.7\.99 and none of that name is present"
                                                       r".*docker login registry\.mender\.io"):
            pull_images(clone, sb.client)
    finally:
        git.Repo(sb.integration).git.worktree("remove", "--force", str(clone))
