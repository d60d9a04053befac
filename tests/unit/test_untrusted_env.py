"""Code of the target release that runs before the approval sees no secret of ours."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from mender_upgrade.tasks.preflight import _target_verify_script
from mender_upgrade.tasks.redaction import untrusted_environment
from mender_upgrade.tasks.repository import check_compose_config

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-0002",
    "MENDER_UPGRADE_WEBHOOK_URL": "https://hooks.example.com/services/T000/B000/webhook-token-0003",
    "PREFECT_API_AUTH_STRING": "admin:auth-string-0004",
    "PREFECT_SERVER_API_AUTH_STRING": "admin:auth-string-0005",
    "PREFECT_API_KEY": "pnu_api-key-0006",
    "DOCKER_AUTH_CONFIG": '{"auths": {"registry": {"auth": "ZG9ja2VyLWF1dGgtMDAwNw=="}}}',
    "DOCKER_HOST_WITH_CREDS": "tcp://user:docker-pass-0008@127.0.0.1:2375",
    "MINIO_SECRET_KEY": "minio-secret-0009",
    "PGPASSWORD": "pg-password-0010",
}


@pytest.fixture
def secret_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


def test_the_scrubbed_environment_has_no_secret_and_keeps_what_compose_needs(secret_environment):
    env = untrusted_environment({**secret_environment, "PATH": "/usr/bin", "HOME": "/root",
                                 "DOCKER_HOST": "unix:///run/docker.sock", "COMPOSE_HTTP_TIMEOUT": "120"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "DOCKER_HOST": "unix:///run/docker.sock",
                   "COMPOSE_HTTP_TIMEOUT": "120"}


def _dumps_env(path: Path) -> str:
    return f"#!/bin/sh\nenv > {path}\n"


def test_run_config_of_the_dry_run_sees_no_secret(tmp_path: Path, secret_environment):
    dump = tmp_path / "env-seen-by-run"
    production = tmp_path / "checkout" / "production"
    production.mkdir(parents=True)
    (production / "run").write_text(_dumps_env(dump))
    (production / "run").chmod(0o755)
    check_compose_config(tmp_path / "checkout")
    seen = dump.read_text()
    assert "PATH=" in seen
    for value in secret_environment.values():
        assert value not in seen


def test_the_target_releases_verify_docker_versions_sees_no_secret(tmp_path: Path, secret_environment):
    dump = tmp_path / "env-seen-by-verify"
    repo = git.Repo.init(tmp_path / "clone")
    (tmp_path / "clone" / "verify-docker-versions").write_text(_dumps_env(dump))
    repo.index.add(["verify-docker-versions"])
    repo.index.commit("2.7.2")
    repo.create_tag("2.7.2")
    check = _target_verify_script(tmp_path / "clone", "2.7.2")
    assert check.ok, check.detail
    seen = dump.read_text()
    assert "PATH=" in seen
    for value in secret_environment.values():
        assert value not in seen
