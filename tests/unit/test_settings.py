"""The one configuration model: every wrong field is named with what it accepts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mender_upgrade.flows.cli import app
from mender_upgrade.tasks.settings import ConfigInvalid, UpgradeSettings, load_settings

WRONG = [
    ({"target_version": "3.0.0; rm -rf /"}, "target_version: must match"),
    ({"target_version": "../x"}, "target_version: must match"),
    ({"compose_project": "Bad Name"}, "compose_project: must match"),
    ({"backup": {"target": "ftp://host/x"}}, "backup.target"),
    ({"backup": {"keep_last": 0}}, "backup.keep_last"),
    ({"backup": {"mode": "lukewarm"}}, "backup.mode"),
    ({"backup": {"server_side_encryption": "rot13"}}, "backup.server_side_encryption"),
    ({"backup": {"part_size_mib": 1}}, "backup.part_size_mib"),
    ({"health_timeout_s": -1}, "health_timeout_s"),
    ({"stability_window_s": "long"}, "stability_window_s"),
    ({"host_id": "a b/c"}, "host_id"),
    ({"window": {"timezone": "Mars/Olympus"}}, "window.timezone"),
    ({"window": {"start": "tomorrow-ish"}}, "window.start"),
    ({"window": {"duration_minutes": 0}}, "window.duration_minutes"),
    ({"approval": {"timeout_minutes": 0}}, "approval.timeout_minutes"),
    ({"surprise": 1}, "surprise: is not a known setting"),
]


@pytest.mark.parametrize("data,field", WRONG)
def test_each_wrong_field_is_named(data, field):
    with pytest.raises(ConfigInvalid) as err:
        load_settings(data)
    assert field in str(err.value)


def test_defaults_are_complete_and_secrets_do_not_print():
    settings = load_settings({"backup": {"secret_access_key": "s3cr3t-value"}})
    assert isinstance(settings, UpgradeSettings)
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in settings.model_dump_json()
    with pytest.raises(ConfigInvalid) as err:
        load_settings({"backup": {"secret_access_key": "s3cr3t-value", "keep_last": -5}})
    assert "s3cr3t-value" not in str(err.value)


def test_cli_run_rejects_a_bad_config_file_naming_the_field_and_changing_nothing(tmp_path):
    config = tmp_path / "upgrade.toml"
    config.write_text('integration_dir = "/nonexistent"\n[backup]\nkeep_last = 0\n')
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "backup.keep_last" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("backup: [unclosed\n")
    result = CliRunner().invoke(app, ["run", "--config", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in " ".join(result.output.split())


def test_s3_access_key_without_a_secret_names_the_missing_credential(monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    backup = load_settings({"backup": {"target": "s3://b/p", "access_key_id": "AKID"}}).backup
    with pytest.raises(ConfigInvalid) as caught:
        backup.open_store()
    assert caught.value.message.startswith("backup.secret_access_key: no S3 secret key for access key id 'AKID'")
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.hint
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-worker-environment")
    assert backup.s3_secret() == "from-the-worker-environment"
    assert load_settings({"backup": {"target": "s3://b/p"}}).backup.s3_secret() is None  # boto3's own chain
