"""The operator's clone of the real integration repository (git and keygen only, no Docker)."""

from __future__ import annotations

import subprocess

import git
import pytest
import yaml

from mender_upgrade.sandbox.integration_fixture import OPERATOR_GATEWAY_HOST, OPERATOR_STORAGE_HOST
from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.images import MONGO_VERSIONS, is_docker_hub_name
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.sandbox.real_upstream import UPSTREAM_ENV, clone_operator, operator_prod_yml, release_files
from mender_upgrade.sandbox.standin_catalogue import compose_images, infra_recipe, mender_service, missing_standins
from mender_upgrade.tasks.containers import compose_services, run_compose
from tests.realfiles import REAL_UPSTREAM, needs_upstream


@pytest.fixture(scope="module")
def bare_upstream(tmp_path_factory):
    """One bare clone of the real upstream (clones from it are fast)."""
    path = tmp_path_factory.mktemp("upstream") / "integration.git"
    subprocess.run(["git", "clone", "-q", "--bare", REAL_UPSTREAM, str(path)], check=True)
    return str(path)


@needs_upstream
@pytest.mark.parametrize("version", ["2.6.4", "2.7.2", "3.0.2", "3.6.5", "3.7.11"])
def test_prod_yml_carries_the_docs_edits_on_every_real_template(bare_upstream, version):
    template = git.Repo(bare_upstream).git.show(f"{version}:production/config/prod.yml.template")
    prod = operator_prod_yml(template)
    doc = yaml.safe_load(prod)["services"]
    gateway = doc["mender-api-gateway"]
    assert gateway["ports"] == ["127.0.0.1:443:443"]
    env = gateway["environment"]
    allowed = env.get("ALLOWED_HOSTS") if isinstance(env, dict) else None
    # traefik enforces the list from 3.2 (the quoted template line): both host names then
    assert allowed == (f"{OPERATOR_GATEWAY_HOST},{OPERATOR_STORAGE_HOST}" if version >= "3.2"
                       else OPERATOR_GATEWAY_HOST)
    assert doc["minio"]["environment"]["MINIO_ACCESS_KEY"] == doc["mender-deployments"]["environment"][
        "DEPLOYMENTS_AWS_AUTH_KEY"]
    assert doc["minio"]["environment"]["MINIO_SECRET_KEY"]
    if "storage-proxy" in doc:
        assert doc["storage-proxy"]["ports"] == ["127.0.0.1:9000:9000"]
    # comments and layout kept: only the edited lines differ
    changed = [(a, b) for a, b in zip(template.splitlines(), prod.splitlines()) if a != b]
    assert len(template.splitlines()) == len(prod.splitlines()) and 5 <= len(changed) <= 10, changed


@needs_upstream
def test_clone_is_the_docs_production_branch_with_keygen_keys(bare_upstream, tmp_path):
    dest = clone_operator(bare_upstream, tmp_path / "integration", "3.6.5")
    repo = git.Repo(dest)
    assert repo.active_branch.name == "production" and not repo.is_dirty(untracked_files=True)
    assert len(list(repo.iter_commits("3.6.5..HEAD"))) == 3
    cert = dest / "production/keys-generated/cert/cert.crt"
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(cert)], capture_output=True,
                          text=True, check=True).stdout
    assert f"DNS:{OPERATOR_STORAGE_HOST}" in text and f"CN = {OPERATOR_GATEWAY_HOST}" in text


@needs_upstream
def test_unknown_version_and_foreign_repository_leave_nothing(bare_upstream, tmp_path):
    with pytest.raises(SandboxError, match=r"version '2\.6\.9' is not a tag .*releases of that minor: 2\.6\.4"):
        clone_operator(bare_upstream, tmp_path / "a", "2.6.9")
    assert not (tmp_path / "a").exists()
    other = git.Repo.init(tmp_path / "other")
    other.index.commit("empty")
    other.create_tag("3.0.2")
    with pytest.raises(SandboxError, match="is not a Mender integration repository.*lacks docker-compose.yml"):
        clone_operator(str(tmp_path / "other"), tmp_path / "b", "3.0.2")
    assert not (tmp_path / "b").exists()


def test_standin_catalogue_names():
    assert mender_service("mendersoftware/workflows-worker:mender-3.7.11") == ("mender-workflows-worker", "3.7.11")
    assert mender_service("registry.mender.io/mendersoftware/tenantadm:mender-3.7.11") == ("mender-tenantadm", "3.7.11")
    assert mender_service("registry.mender.io/mendersoftware/workflows-enterprise-worker:mender-3.6.5") == (
        "mender-workflows-worker", "3.6.5")
    # Enterprise-only services are not on Docker Hub; unknown repositories get no stand-in
    assert mender_service("mendersoftware/tenantadm:mender-3.7.11") is None
    assert mender_service("registry.mender.io/mendersoftware/mtls-ambassador:mender-3.7.11") is None
    redis = infra_recipe("redis:6.0.5-alpine").dockerfile("b")
    assert "HEALTHCHECK" not in redis and "VOLUME /data" in redis
    assert is_docker_hub_name("mongo:4.4") and is_docker_hub_name("minio/minio:RELEASE.2021-04-22T15-44-28Z")
    assert not is_docker_hub_name("registry.mender.io/mendersoftware/tenantadm:mender-3.7.11")
    assert "HEALTHCHECK --interval=1m" in infra_recipe("minio/minio:RELEASE.2019-04-23T23-50-36Z").dockerfile("b")
    assert "HEALTHCHECK" not in infra_recipe("minio/minio:RELEASE.2021-04-22T15-44-28Z").dockerfile("b")
    assert "HEALTHCHECK" not in infra_recipe("traefik:v2.8").dockerfile("b")
    assert "start-period=120s" in infra_recipe("mendersoftware/gui:mender-2.6.4").dockerfile("b")
    images = compose_images("services:\n  a: {image: 'mongo:4.4'}\n  b: {image: 'example/x:1'}\n")
    assert missing_standins(images, {"mongo:4.4"}) == ["example/x:1"]
    with pytest.raises(SandboxError, match="without an image: c"):
        compose_images("services:\n  c: {build: .}\n")


ENTERPRISE_ONLY = {"mender-tenantadm", "mender-auditlogs", "mender-devicemonitor", "mender-generate-delta-worker",
                   "mender-redis"}


@needs_upstream
def test_enterprise_clone_runs_the_enterprise_compose_files_with_a_standin_for_each_image(bare_upstream, tmp_path):
    dest = clone_operator(bare_upstream, tmp_path / "integration", "3.6.5", enterprise=True)
    repo = git.Repo(dest)
    assert not repo.is_dirty(untracked_files=True)
    assert repo.head.commit.message.strip() == "production: Enterprise configuration"
    config = dest / "production/config"
    assert (config / "enterprise.yml").read_text() == (config / "enterprise.yml.template").read_text()
    # production/run adds docker-compose.enterprise.yml because config/enterprise.yml exists
    assert ENTERPRISE_ONLY <= set(compose_services(dest))
    for release in [dest, *release_files(dest, ["3.7.11"], enterprise=True)]:
        named = compose_images(run_compose(release, ["config"]))
        assert missing_standins(named, set(MONGO_VERSIONS)) == [], release
        pin = "3.6.5" if release == dest else "3.7.11"
        assert named["mender-tenantadm"] == f"registry.mender.io/mendersoftware/tenantadm:mender-{pin}"
        assert named["mender-deployments"] == f"registry.mender.io/mendersoftware/deployments-enterprise:mender-{pin}"


def test_enterprise_without_the_real_repository_is_refused(monkeypatch):
    monkeypatch.delenv(UPSTREAM_ENV, raising=False)
    with pytest.raises(SandboxError, match=r"enterprise: .*real repository.*MENDER_INTEGRATION_UPSTREAM"):
        stack.up("3.7.11", enterprise=True)
