"""The sandbox on the real `mendersoftware/integration` repository (MENDER_INTEGRATION_UPSTREAM).

Each release starts from the operator's clone of the real files with the clone's own `./run`;
every image the compose files name is a stand-in under its real name. Skipped when neither the
variable nor the shared bundle is there.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess

import docker
import git
import pytest

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.integration_fixture import OPERATOR_GATEWAY_HOST, OPERATOR_STORAGE_HOST, PRODUCTION_BRANCH
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.sandbox.real_upstream import UPSTREAM_ENV
from mender_upgrade.sandbox.seed import artifact_files
from mender_upgrade.sandbox.standin_catalogue import compose_images
from mender_upgrade.tasks import service_health
from mender_upgrade.tasks.containers import PROJECT_LABEL, compose_services, project_states, run_compose
from tests.realfiles import REAL_UPSTREAM, needs_upstream

pytestmark = pytest.mark.sandbox

def _container(sb: stack.Sandbox, service: str):
    return sb.client.containers.get(project_states(sb.client)[service].container_id)


def _ip(container) -> str:
    return next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]


def _https(address: str, port: int, path: str, host: str, method: str = "GET") -> service_health.Answer:
    return service_health.call(address, port, path, method=method, tls=True, host=host, timeout=10)


def _assert_nothing_left(home: SandboxHome) -> None:
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}=menderproduction"}) == []
    assert client.volumes.list(filters={"label": stack.SANDBOX_LABEL}) == []
    assert not home.run.exists()


def _check_operator_clone(sb: stack.Sandbox, version: str, enterprise: bool = False) -> None:
    repo = git.Repo(sb.integration)
    assert repo.active_branch.name == PRODUCTION_BRANCH and not repo.is_dirty(untracked_files=True)
    own = list(repo.iter_commits(f"{version}..HEAD"))
    assert [c.message.strip() for c in own] == [*(["production: Enterprise configuration"] if enterprise else []),
                                               "production: final configuration",
                                               "production: adding generated keys and certificates",
                                               "production: initial template"]
    config = sb.integration / "production/config"
    assert (config / "enterprise.yml").is_file() == enterprise
    prod = (sb.integration / "production/config/prod.yml").read_text()
    settings = [ln for ln in prod.splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in settings if "set-my-alias-here" in ln or "my-gateway-dns-name" in ln]
    assert '"127.0.0.1:443:443"' in prod and '- "443:443"' not in prod
    # the repository's own keygen made real keys (parseable by openssl)
    key = next((sb.integration / "production/keys-generated/keys/useradm").glob("private.key"))
    assert subprocess.run(["openssl", "rsa", "-check", "-noout", "-in", str(key)], capture_output=True).returncode == 0


@needs_upstream
# Suite budget: the real-files flow tests (test_real_flow.py) and the fault matrix start from
# 2.6.4, 3.6.5 and 3.6.5 Enterprise and gate 2.7.2, 3.0.2, 3.7.11 and 3.7.11 Enterprise on the
# way; 3.7.11 runs here on every suite run, the others on demand (-m real_extended).
@pytest.mark.parametrize(("version", "enterprise"), [
    *(pytest.param(v, False, id=v, marks=pytest.mark.real_extended) for v in ("2.6.4", "2.7.2", "3.0.2", "3.6.5")),
    pytest.param("3.7.11", False, id="3.7.11"),
    pytest.param("3.7.11", True, id="3.7.11-enterprise", marks=pytest.mark.real_extended)])
def test_real_release_runs_and_serves(real_upstream, version, enterprise):
    sb = stack.up(version, enterprise=enterprise)
    try:
        _check_operator_clone(sb, version, enterprise)
        services = compose_services(sb.integration)
        running = run_compose(sb.integration, ["ps", "--services", "--filter", "status=running"]).split()
        assert sorted(running) == services
        named = compose_images(run_compose(sb.integration, ["config"]))
        states = project_states(sb.client)
        assert {s: st.image for s, st in states.items()} == named
        # Docker health only where the real image or compose file has one.
        with_health = {s for s, st in states.items() if st.health is not None}
        expected_health = {"mender-gui", "minio"}
        assert with_health == expected_health, with_health
        # Each API service answers its internal health path (label from 3.0, table before).
        targets = {}
        for service in services:
            container = _container(sb, service)
            path = service_health.health_path(service, container.labels)
            if path:
                targets[service] = (_ip(container), path)
        assert {"mender-deployments", "mender-device-auth", "mender-useradm", "mender-inventory",
                "mender-workflows-server", "mender-deviceconnect"} <= set(targets)
        answers = service_health.probe_health(targets)
        assert all(a.status == 200 for a in answers.values()), answers
        if enterprise:
            _check_enterprise_services(sb, states, targets)
        # The gateway, as users and devices reach it (published on 127.0.0.1:443 only).
        gateway = _container(sb, "mender-api-gateway")
        bindings = gateway.attrs["HostConfig"]["PortBindings"]["443/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": "443"}]
        login = _https("127.0.0.1", 443, "/api/management/v1/useradm/auth/login", OPERATOR_GATEWAY_HOST, "POST")
        assert login.status == 401, login
        device = _https("127.0.0.1", 443, "/api/devices/v1/authentication/auth_requests", OPERATOR_GATEWAY_HOST,
                        "POST")
        assert device.status is not None and device.status != 404 and device.status < 500, device
        unauthenticated = _https("127.0.0.1", 443, "/api/management/v1/deployments/deployments",
                                 OPERATOR_GATEWAY_HOST)
        assert unauthenticated.status == 401, unauthenticated
        # The storage host name reaches minio: a seeded artifact comes back byte for byte.
        path, (content, _, _) = next((p, f) for p, f in artifact_files(2604).items()
                                     if p.startswith("mender-artifact-storage/"))
        storage_port = 9000 if "storage-proxy" in states else 443
        with _raw_https(storage_port, f"/{path}", OPERATOR_STORAGE_HOST) as body:
            assert hashlib.sha256(body).hexdigest() == hashlib.sha256(content).hexdigest()
    finally:
        stack.down()
    _assert_nothing_left(sb.home)


def _check_enterprise_services(sb: stack.Sandbox, states: dict, targets: dict) -> None:
    """docker-compose.enterprise.yml's services run from registry.mender.io, each serving its
    internal health path (tenantadm from the table: it has no label), redis answering PING."""
    enterprise_only = {"mender-tenantadm", "mender-auditlogs", "mender-devicemonitor",
                       "mender-generate-delta-worker", "mender-redis"}
    assert enterprise_only <= set(states)
    from_registry = {s for s, st in states.items() if st.image.startswith("registry.mender.io/mendersoftware/")}
    assert from_registry == enterprise_only - {"mender-redis"} | {
        "mender-deployments", "mender-device-auth", "mender-inventory", "mender-useradm",
        "mender-workflows-server", "mender-workflows-worker"}, from_registry
    assert states["mender-redis"].image == "redis:6.0.5-alpine"
    assert targets["mender-tenantadm"][1] == "/api/internal/v1/tenantadm/health"
    assert {"mender-auditlogs", "mender-devicemonitor"} <= set(targets)
    with socket.create_connection((_ip(_container(sb, "mender-redis")), 6379), timeout=10) as redis:
        redis.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert redis.recv(64) == b"+PONG\r\n"
    # the gateway routes Enterprise's management APIs behind the user login, as traefik.enterprise.yaml
    audit = _https("127.0.0.1", 443, "/api/management/v1/auditlogs/logs", OPERATOR_GATEWAY_HOST)
    assert audit.status == 401, audit


class _raw_https:
    """GET over TLS to 127.0.0.1:port with a Host header; the body as bytes."""

    def __init__(self, port: int, path: str, host: str):
        import http.client
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        self.conn.request("GET", path, headers={"Host": host, "X-Amz-Date": "20261129T000000Z"})
        self.response = self.conn.getresponse()

    def __enter__(self) -> bytes:
        assert self.response.status == 200, self.response.status
        return self.response.read()

    def __exit__(self, *exc) -> None:
        self.conn.close()


def _refused(message_part: str, version: str = "2.6.4") -> None:
    home = SandboxHome.default()
    before = docker.from_env().containers.list(all=True, filters={"label": f"{PROJECT_LABEL}=menderproduction"})
    with pytest.raises(SandboxError, match=message_part):
        stack.up(version)
    after = docker.from_env().containers.list(all=True, filters={"label": f"{PROJECT_LABEL}=menderproduction"})
    assert [c.id for c in after] == [c.id for c in before]  # nothing started, nothing replaced
    assert not (home.root / "staged-clone").exists()


@needs_upstream
def test_unknown_version_is_refused_naming_it(real_upstream):
    _refused(r"version '3\.7\.99' is not a tag of .*mendersoftware-integration.*3\.7\.11", "3.7.99")


def test_upstream_that_is_not_the_integration_repository_is_refused(monkeypatch, tmp_path):
    other = git.Repo.init(tmp_path / "other")
    (tmp_path / "other" / "README.md").write_text("not mender\n")
    other.index.add(["README.md"])
    other.index.commit("init")
    other.create_tag("2.6.4")
    monkeypatch.setenv(UPSTREAM_ENV, str(tmp_path / "other"))
    _refused(r"is not a Mender integration repository .* lacks docker-compose\.yml")
    monkeypatch.setenv(UPSTREAM_ENV, str(tmp_path / "missing"))
    _refused(r"MENDER_INTEGRATION_UPSTREAM=.*missing' cannot be cloned")


@needs_upstream
def test_image_without_standin_is_refused_naming_it(monkeypatch, tmp_path):
    repo = git.Repo.clone_from(REAL_UPSTREAM, tmp_path / "upstream", no_checkout=True)
    repo.git.checkout("-q", "-b", "exotic", "2.6.4")
    compose = tmp_path / "upstream" / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("    mender-gui:\n        image: mendersoftware/gui:mender-2.6.4",
                                                   "    mender-gui:\n        image: example/exotic-gui:1.0"))
    repo.git.commit("-qam", "exotic gui")
    repo.create_tag("2.6.5")
    monkeypatch.setenv(UPSTREAM_ENV, str(tmp_path / "upstream"))
    _refused(r"name images with no stand-in: example/exotic-gui:1\.0; nothing was started", "2.6.5")
