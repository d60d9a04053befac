"""The sandbox against its real parts: Docker, compose v1 via the clone's ./run, the registry
mirror, the mongo stand-in's wire protocol and dump tools, SeaweedFS, and git."""

from __future__ import annotations

import hashlib
import subprocess

import docker
import git
import pytest
from botocore.exceptions import ClientError

from mender_upgrade.sandbox import images, stack
from mender_upgrade.sandbox.integration_fixture import create_operator_clone
from mender_upgrade.sandbox.releases import IGNORED_TAGS, Release, all_fixture_tags
from tests.sandbox.conftest import mongo_snapshot
from mender_upgrade.tasks import service_health
from mender_upgrade.tasks.containers import compose_services, project_states, run_compose

pytestmark = pytest.mark.sandbox


def test_old_stack_healthy_through_the_clones_run(sandbox):
    running = set(run_compose(sandbox.integration, ["ps", "--services", "--filter", "status=running"]).split())
    assert running == set(compose_services(sandbox.integration))
    states = project_states(sandbox.client)
    assert "storage-proxy" in states  # a 2.6 stack still has it
    probed = []
    for service, image in Release("2.6.4").images().items():
        assert states[service].image == image
        assert states[service].ok, states[service]
        if service == "mender-mongo":
            continue
        # Docker health only where the image has a HEALTHCHECK (gui, old minio), as the real ones
        has_check = bool(sandbox.client.images.get(image).attrs["Config"].get("Healthcheck"))
        assert states[service].health == ("healthy" if has_check else None), (service, states[service])
        # 2.6's compose files set no health label...
        container = sandbox.client.containers.get(states[service].container_id)
        assert service_health.HEALTH_LABEL not in container.labels
        # ...yet each API service serves its real internal path on :8080, reachable from the host.
        path = service_health.INTERNAL_HEALTH_PATHS.get(service)
        if path:
            assert states[service].health_path == path
            answer = service_health.call(states[service].ip, service_health.HEALTH_PORT, path)
            assert answer.ok, f"{service}: {answer}"
            probed.append(service)
    assert sorted(probed) == sorted(Release("2.6.4").images().keys() & service_health.INTERNAL_HEALTH_PATHS.keys())
    assert len(probed) == 5


def test_pull_is_served_by_the_registry_mirror_under_docker_hub_names(sandbox, tmp_path):
    clone = create_operator_clone(sandbox.upstream, tmp_path / "integration", "2.7.2")
    image = "mendersoftware/deployments:mender-2.7.2"
    local_id = sandbox.client.images.get(image).id
    sandbox.client.images.remove(image, noprune=True)
    with pytest.raises(docker.errors.ImageNotFound):
        sandbox.client.images.get(image)
    out = subprocess.run(["./run", "pull", "mender-deployments"], cwd=clone / "production",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    pulled = sandbox.client.images.get(image)
    assert pulled.id == local_id
    # A pulled image records the digest of the registry it came from, under the Docker Hub name.
    assert any(d.startswith("mendersoftware/deployments@sha256:") for d in pulled.attrs["RepoDigests"])
    assert "mendersoftware/deployments" in images.registry_catalog()
    assert "library/mongo" in images.registry_catalog()


def test_mongodump_archive_roundtrips_the_seed_exactly(sandbox):
    mongo_id = project_states(sandbox.client)["mender-mongo"].container_id
    scratch = sandbox.client.containers.run("mongo:4.4", detach=True, labels={stack.SANDBOX_LABEL: "scratch"})
    try:
        scratch.reload()
        address = scratch.attrs["NetworkSettings"]["IPAddress"]
        pipeline = (f"docker exec {mongo_id} mongodump --archive --gzip | "
                    f"docker exec -i {scratch.id} mongorestore --archive --gzip --drop")
        # Wait for the scratch server, then stream the dump straight into it.
        subprocess.run(["docker", "exec", scratch.id, "python3", "-c",
                        "import socket,time\nfor _ in range(100):\n try:\n  socket.create_connection(('127.0.0.1',27017),1); break\n except OSError: time.sleep(0.2)"],
                       check=True, timeout=60)
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        from pymongo import MongoClient
        with sandbox.mongo() as src, MongoClient(f"mongodb://{address}:27017/", serverSelectionTimeoutMS=10000) as dst:
            before, after = mongo_snapshot(src), mongo_snapshot(dst)
        assert "deviceauth-5f1a2b3c4d5e6f7a8b9c0d1e.auth_sets" in before
        assert sum(len(docs) for docs, _ in before.values()) > 200
        assert after == before
    finally:
        scratch.remove(force=True)


def test_s3_put_get_with_sha256_and_enforced_credentials(sandbox):
    s3 = sandbox.s3.client()
    body = b"mender backup probe " * 1000
    digest = hashlib.sha256(body).digest()
    import base64
    s3.put_object(Bucket=sandbox.s3.bucket, Key="probe/object", Body=body, ChecksumAlgorithm="SHA256")
    got = s3.get_object(Bucket=sandbox.s3.bucket, Key="probe/object", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumSHA256"] == base64.b64encode(digest).decode()
    with pytest.raises(ClientError) as bad_digest:
        s3.put_object(Bucket=sandbox.s3.bucket, Key="probe/bad", Body=body,
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest()).decode())
    assert bad_digest.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as denied:
        sandbox.s3.client(secret_key="wrong-secret").list_objects_v2(Bucket=sandbox.s3.bucket)
    assert denied.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")
    s3.delete_object(Bucket=sandbox.s3.bucket, Key="probe/object")


def test_operator_clone_looks_like_a_real_integration_clone(sandbox):
    repo = git.Repo(sandbox.integration)
    tags = set(repo.git.tag().split())
    assert set(all_fixture_tags()) | set(IGNORED_TAGS) <= tags
    remote_branches = {r.strip() for r in repo.git.branch("-r").splitlines()}
    assert {"origin/master", "origin/2.6.x", "origin/2.7.x", "origin/3.7.x", "origin/staging"} <= remote_branches
    assert repo.active_branch.name == "production"
    assert not repo.is_dirty(untracked_files=True)
    assert repo.git.describe("--tags", "--abbrev=0") == "2.6.4"
    assert "production/config/prod.yml" in repo.git.ls_files().split()


def test_artifact_volume_holds_the_seed_with_dot_entry(sandbox):
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    listing = minio.exec_run(["sh", "-c", "cd /export && find . -type f | sort && sha256sum mender-artifact-storage/release-0.mender"]).output.decode()
    assert "./.minio.sys/format.json" in listing
    from mender_upgrade.sandbox.seed import artifact_files
    big = hashlib.sha256(artifact_files()["mender-artifact-storage/release-0.mender"][0]).hexdigest()
    assert big in listing


@pytest.mark.last
def test_sandbox_down_leaves_nothing_behind(sandbox):
    client = sandbox.client
    stack.down(sandbox.home)
    assert client.containers.list(all=True, filters={"label": "com.docker.compose.project=menderproduction"}) == []
    assert client.containers.list(all=True, filters={"label": stack.SANDBOX_LABEL}) == []
    assert client.networks.list(filters={"label": "com.docker.compose.project=menderproduction"}) == []
    assert [v.name for v in client.volumes.list() if v.name in stack.EXTERNAL_VOLUMES] == []
    assert not sandbox.home.run.exists()
    from mender_upgrade.sandbox.registry import registry_answers
    assert not registry_answers()
    from mender_upgrade.sandbox.processes import port_open
    from mender_upgrade.sandbox.s3 import S3_PORT
    assert not port_open(S3_PORT)
