"""Stopping the writers for a backup and starting them again, through the operator's `./run`
(here a script that records its calls and fails where told): a failed restart never hides the
backup's own failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from mender_upgrade.tasks.backup import quiesced
from mender_upgrade.tasks.errors import ComposeCommandFailed
from mender_upgrade.tasks.errors import TransientError


def _integration(tmp_path: Path, fail_on: str) -> Path:
    production = tmp_path / "production"
    production.mkdir()
    run = production / "run"
    run.write_text(f'#!/bin/sh\necho "$@" >> calls\nif [ "$1" = "{fail_on}" ]; then echo "cannot $1" >&2; exit 1; fi\n')
    run.chmod(0o755)
    return tmp_path


def _calls(integration: Path) -> list[str]:
    return (integration / "production" / "calls").read_text().splitlines()


def test_a_failed_restart_after_a_failed_backup_keeps_the_first_error(tmp_path: Path):
    integration = _integration(tmp_path, fail_on="start")
    with pytest.raises(TransientError) as err:  # the first error's type still decides retries
        with quiesced(integration, ["mender-useradm", "mender-deployments"], log=lambda m: None):
            raise TransientError("mongodump lost its connection", "check mender-mongo")
    assert err.value.message.startswith("mongodump lost its connection; starting the writers again "
                                        "(mender-useradm, mender-deployments) failed too: `./run start")
    assert "cannot start" in str(err.value) and err.value.hint == "check mender-mongo"
    assert _calls(integration) == ["stop mender-useradm mender-deployments", "start mender-useradm mender-deployments"]


def test_a_library_error_keeps_its_type_and_notes_the_restart(tmp_path: Path):
    integration = _integration(tmp_path, fail_on="start")
    with pytest.raises(KeyError) as err:
        with quiesced(integration, ["mender-useradm"], log=lambda m: None):
            raise KeyError("manifest")
    assert any("starting the writers again (mender-useradm) failed too" in note for note in err.value.__notes__)


def test_a_failed_restart_after_a_good_backup_is_the_error(tmp_path: Path):
    integration = _integration(tmp_path, fail_on="start")
    with pytest.raises(ComposeCommandFailed, match="cannot start"):
        with quiesced(integration, ["mender-useradm"], log=lambda m: None):
            pass


def test_writers_start_again_after_a_failed_backup(tmp_path: Path):
    integration = _integration(tmp_path, fail_on="none")
    with pytest.raises(TransientError) as err:
        with quiesced(integration, ["mender-useradm"], log=lambda m: None):
            raise TransientError("S3 timed out")
    assert err.value.message == "S3 timed out" and not getattr(err.value, "__notes__", None)
    assert _calls(integration) == ["stop mender-useradm", "start mender-useradm"]
