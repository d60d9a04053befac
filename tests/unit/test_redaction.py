"""Outside output is scrubbed before it reaches reports, states and webhooks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import git
import pytest
import yaml
from typer.testing import CliRunner

from mender_upgrade.flows.cli import app
from mender_upgrade.flows.report import RunReport
from mender_upgrade.flows.upgrade import approval_description
from mender_upgrade.tasks.containers import run_compose
from mender_upgrade.tasks.errors import ComposeCommandFailed
from mender_upgrade.tasks.redaction import MASK, parse_error_position, scrub
from mender_upgrade.tasks.repository import HopReview, OriginUnreachable, fetch_tags
from mender_upgrade.tasks.settings import load_settings
from mender_upgrade.tasks.template_carry import template_drift
from mender_upgrade.tasks.yaml_edit import ProdYamlError

SECRET = "sup3r-s3cret-minio-key"


@pytest.mark.parametrize("text,hidden", [
    ("fatal: unable to access 'https://deploy:ghp_tok3nvalue@git.example.com/x.git/'", "ghp_tok3nvalue"),
    ("remote: https://oauth2:glpat-abc123@gitlab.example.com/x", "glpat-abc123"),
    (f"      MINIO_SECRET_KEY: {SECRET}", SECRET),
    (f"DEPLOYMENTS_AWS_AUTH_SECRET={SECRET}", SECRET),
    (f'{{"secret_access_key": "{SECRET}"}}', SECRET),
    (f"password: {SECRET}", SECRET),
])
def test_scrub_masks_credentials(text, hidden):
    out = scrub(text)
    assert hidden not in out and MASK in out


def test_scrub_keeps_ordinary_text_and_masks_known_secrets():
    text = "services not healthy after 25 s: {'mender-deployments': 'running/starting'}"
    assert scrub(text) == text
    assert scrub(f"boto said {SECRET} is wrong", [SECRET, None, ""]) == f"boto said {MASK} is wrong"


def test_run_output_tail_is_scrubbed(tmp_path: Path):
    production = tmp_path / "production"
    production.mkdir()
    run = production / "run"
    run.write_text(f"#!/bin/sh\necho 'services:'\necho '  MINIO_SECRET_KEY: {SECRET}'\n"
                   "echo 'ERROR: for mender-useradm https://user:hunter2pass@registry.example.com' >&2\nexit 1\n")
    run.chmod(0o755)
    with pytest.raises(ComposeCommandFailed) as err:
        run_compose(tmp_path, ["config", "-q"])
    assert SECRET not in str(err.value) and "hunter2pass" not in str(err.value)
    assert "mender-useradm" in str(err.value)


def test_origin_url_with_credentials_is_redacted(tmp_path: Path):
    repo = git.Repo.init(tmp_path / "clone", initial_branch="production")
    (tmp_path / "clone" / "f").write_text("x")
    repo.index.add(["f"])
    repo.index.commit("c")
    repo.create_remote("origin", "http://deploy:t0ken-in-url@127.0.0.1:1/integration.git")
    with pytest.raises(OriginUnreachable) as err:
        fetch_tags(repo)
    assert "t0ken-in-url" not in str(err.value) and "127.0.0.1:1" in str(err.value)


def test_a_yaml_syntax_error_does_not_quote_the_secret_line(tmp_path: Path):
    text = f"services:\n  minio:\n    environment:\n      MINIO_SECRET_KEY: [{SECRET}\n  x: 1\n"
    with pytest.raises(ProdYamlError) as err:
        template_drift(text, "services: {}\n", "services: {}\n")
    assert SECRET not in str(err.value) and "line 4" in str(err.value)
    config = tmp_path / "settings.yaml"
    config.write_text(f"backup:\n  secret_access_key: [{SECRET}\n  target: x\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2 and "not valid YAML" in result.output and SECRET not in result.output
    with pytest.raises(yaml.YAMLError) as exc:
        yaml.safe_load(config.read_text())
    assert SECRET in str(exc.value) and SECRET not in parse_error_position(exc.value)  # what it would have printed


def renamed_secret_key_description(run_id: str, digest: str, leftovers: dict[str, int] | None = None) -> str:
    """The approval description of a hop whose template renames a secret-bearing key
    (MINIO_SECRET_KEY -> MINIO_ROOT_PASSWORD): the drift carries the operator's current value,
    SECRET, of the old key."""
    old = "services:\n  minio:\n    environment:\n      MINIO_SECRET_KEY: minio-secret-here\n"
    new = "services:\n  minio:\n    environment:\n      MINIO_ROOT_PASSWORD: minio-secret-here\n"
    current = f"services:\n  minio:\n    environment:\n      MINIO_SECRET_KEY: {SECRET}\n"
    drift = template_drift(current, old, new)
    assert any(c.current == SECRET for c in drift)  # the value is there to leak
    review = HopReview("2.6.4", "2.7.2", log=[], diff="", removed_services=[], drift={"prod.yml": drift})
    report = RunReport(host="h", run_id=run_id, plan_digest=digest)
    return approval_description(report, SimpleNamespace(current="2.6.4", target="2.7.2", hops=["2.7.2"]), [review],
                                leftovers or {}, load_settings({}))


def test_a_toml_config_with_a_syntax_error_does_not_quote_the_secret_line(tmp_path: Path):
    config = tmp_path / "settings.toml"
    config.write_text(f'[backup]\nsecret_access_key = "{SECRET}\ntarget = "x"\n')  # the quote never closes
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2 and "not valid TOML" in result.output and "line 2" in result.output
    assert SECRET not in result.output


def test_approval_description_shows_changed_keys_never_values():
    """A template change renaming a secret-bearing key: the description names the key and what
    happens, never a value."""
    text = renamed_secret_key_description("r", "d" * 64, {"deviceauth.devices": 2, "deviceauth.tokens": 0})
    assert "`services.minio.environment.MINIO_SECRET_KEY`: customized (the new template no longer sets it)" in text
    assert "MINIO_ROOT_PASSWORD" in text
    assert SECRET not in text and "minio-secret-here" not in text and "d" * 64 in text
    assert "### 2.6.4 → 2.7.2: 0 upstream commits" in text and "{" not in text  # no raw dicts
    assert "leftovers to clean (dry run): deviceauth.devices 2\n" in text
