"""The host file decides what is safe; run parameters may only narrow it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mender_upgrade.tasks.host_policy import (HOST_FILE_ENV, HostFileUnsafe, ParametersWiden, SecretInParameters, load_host_policy, narrow,
                               settings_for_run)
from mender_upgrade.tasks.settings import load_settings

HOST_TOML = """\
host_id = "mender-prod-1"
integration_dir = "/opt/mender/integration"
cleanup_apply = true

[backup]
target = "s3://company-backups/mender"
endpoint_url = "https://s3.internal.example"
access_key_id = "AKIAHOSTFILE"
secret_access_key = "host-file-secret-value"

[approval]
require_approval = true
timeout_minutes = 30
allowed_signers = "/etc/mender-upgrade/allowed_signers"
"""


@pytest.fixture
def host_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(HOST_TOML)
    path.chmod(0o644)
    os.chown(path, 0, 0)
    monkeypatch.setenv(HOST_FILE_ENV, str(path))
    return path


def test_unset_fields_take_the_host_files_values(host_file):
    run = load_settings({"target_version": "2.7.2"})
    effective, warnings = settings_for_run(run, started_through_api=True)
    assert warnings == []
    assert effective.target_version == "2.7.2"
    assert effective.host() == "mender-prod-1"
    assert str(effective.integration_dir) == "/opt/mender/integration"
    assert effective.backup.target == "s3://company-backups/mender"
    assert effective.backup.secret_access_key.get_secret_value() == "host-file-secret-value"
    assert effective.approval.timeout_minutes == 30
    assert str(effective.approval.allowed_signers) == "/etc/mender-upgrade/allowed_signers"


@pytest.mark.parametrize("params,field", [
    ({"approval": {"require_approval": False}}, "approval.require_approval"),
    ({"backup": {"target": "s3://attacker-bucket/x"}}, "backup.target"),
    ({"backup": {"endpoint_url": "http://203.0.113.9:9000"}}, "backup.endpoint_url"),
    ({"integration_dir": "/tmp/other-clone"}, "integration_dir"),
    ({"host_id": "someone-else"}, "host_id"),
    ({"compose_project": "other"}, "compose_project"),
    ({"approval": {"timeout_minutes": 600}}, "approval.timeout_minutes"),
    ({"approval": {"allowed_signers": "/tmp/my_signers"}}, "approval.allowed_signers"),
])
def test_widening_parameters_are_refused_naming_the_field(host_file, params, field):
    with pytest.raises(ParametersWiden) as err:
        settings_for_run(load_settings(params), started_through_api=False)
    assert f"{field}:" in err.value.message
    assert str(host_file) in err.value.message
    assert err.value.host_id == "mender-prod-1"


def test_every_widening_field_is_named_at_once_and_no_secret_is_shown(host_file):
    run = load_settings({"approval": {"require_approval": False},
                         "backup": {"target": "s3://evil/x", "secret_access_key": "attacker-typed-secret"}})
    with pytest.raises(ParametersWiden) as err:
        settings_for_run(run, started_through_api=False)
    text = str(err.value)
    for field in ("approval.require_approval", "backup.target", "backup.secret_access_key"):
        assert f"{field}:" in text
    assert "attacker-typed-secret" not in text and "host-file-secret-value" not in text


def test_narrowing_is_allowed(host_file):
    run = load_settings({"target_version": "2.7.2", "cleanup_apply": False,
                         "approval": {"approve_before_downtime": True, "require_signed": True, "timeout_minutes": 5},
                         "backup": {"target": "s3://company-backups/mender"}})  # repeating the host's value
    effective = narrow(run, load_host_policy())
    assert effective.cleanup_apply is False
    assert effective.approval.approve_before_downtime and effective.approval.require_signed
    assert effective.approval.timeout_minutes == 5
    assert effective.approval.require_approval is True


def test_cleanup_cannot_be_switched_on_when_the_host_switched_it_off(host_file):
    host_file.write_text(HOST_TOML.replace("cleanup_apply = true", "cleanup_apply = false"))
    with pytest.raises(ParametersWiden, match="cleanup_apply:"):
        settings_for_run(load_settings({"cleanup_apply": True}), started_through_api=False)
    effective, _ = settings_for_run(load_settings({}), started_through_api=False)
    assert effective.cleanup_apply is False


def test_a_host_file_not_owned_by_root_is_refused(host_file):
    os.chown(host_file, 65534, 65534)
    with pytest.raises(HostFileUnsafe, match="owned by uid 65534, not root"):
        load_host_policy()


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_group_or_world_writable_host_file_is_refused(host_file, mode):
    host_file.chmod(mode)
    with pytest.raises(HostFileUnsafe, match=f"mode {mode:04o}"):
        load_host_policy()


def test_a_host_file_with_a_syntax_error_does_not_print_its_secret_line(host_file):
    host_file.write_text(HOST_TOML.replace('secret_access_key = "host-file-secret-value"',
                                           'secret_access_key = "host-file-secret-value'))
    with pytest.raises(HostFileUnsafe) as err:
        load_host_policy()
    assert "not valid TOML" in err.value.message and "line 9" in err.value.message
    assert "host-file-secret-value" not in str(err.value)


def test_an_unknown_host_file_field_is_named(host_file):
    host_file.write_text(HOST_TOML + "\nrequire_nothing = true\n")
    with pytest.raises(HostFileUnsafe, match="require_nothing"):
        load_host_policy()


def test_a_path_chosen_through_the_environment_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(HOST_FILE_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(HostFileUnsafe, match="does not exist"):
        load_host_policy()


def test_without_a_host_file_only_a_local_run_proceeds(monkeypatch):
    monkeypatch.delenv(HOST_FILE_ENV, raising=False)
    monkeypatch.setattr("mender_upgrade.tasks.host_policy.DEFAULT_HOST_FILE", Path("/nonexistent/mender-upgrade/host.toml"))
    run = load_settings({"approval": {"require_approval": False}})
    effective, warnings = settings_for_run(run, started_through_api=False)
    assert effective is run and "no host file" in warnings[0]
    with pytest.raises(HostFileUnsafe, match="runs started through the Prefect API"):
        settings_for_run(run, started_through_api=True)


def test_a_secret_in_the_parameters_of_an_api_run_is_refused_even_if_it_matches(host_file):
    run = load_settings({"backup": {"secret_access_key": "host-file-secret-value"}})
    with pytest.raises(SecretInParameters) as err:
        settings_for_run(run, started_through_api=True)
    assert err.value.paths == ["backup.secret_access_key"] and "backup.secret_block" in err.value.hint
    assert "host-file-secret-value" not in str(err.value)
    effective, _ = settings_for_run(run, started_through_api=False)  # a config file at the host's terminal
    assert effective.backup.secret_access_key.get_secret_value() == "host-file-secret-value"
