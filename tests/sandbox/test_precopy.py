"""The two-part backup on the sandbox: a hot pre-copy, changes while the server serves, the
quiet-period dump and deltas; restore = base + removals + delta, and the drill agrees."""

from __future__ import annotations

import pytest

from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.backup import VOLUME, VOLUME_DELTA, read_manifest
from mender_upgrade.tasks.containers import project_states
from mender_upgrade.tasks.precopy import finish_backup, pre_copy
from mender_upgrade.tasks.restore import restore_backup, restore_drill
from tests.sandbox.conftest import anonymous_dangling_volumes, artifact_snapshot, mongo_snapshot

pytestmark = pytest.mark.sandbox


def _minio(sandbox):
    return sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)


def _sh(container, script: str) -> None:
    result = container.exec_run(["sh", "-c", script])
    assert result.exit_code == 0, result.output.decode()


def test_precopy_then_delta_restores_the_state_of_the_quiet_period(sandbox, s3_settings):
    stack.mark_dirty(sandbox)
    store = s3_settings.open_store("sandbox-host")
    anonymous_before = anonymous_dangling_volumes(sandbox.client)
    minio = _minio(sandbox)
    _sh(minio, "mkdir -p /export/old-dir/deep && echo a > /export/old-dir/deep/f && echo same > /export/same-size "
               "&& echo file > /export/becomes-dir")
    pre = pre_copy(sandbox.client, sandbox.integration, store, "precopy-test", holds_lock=True, log=lambda m: None)
    assert [(o.kind, o.name) for o in pre.manifest.objects] == [(VOLUME, "mender-artifacts")]
    assert not pre.manifest.verified
    assert pre.rate > 0 and "mender-artifacts" in pre.listings

    # Written while the server serves, after the pre-copy: must all be in the backup.
    _sh(minio, "rm -rf /export/old-dir && echo SAME > /export/same-size && rm /export/becomes-dir "
               "&& mkdir /export/becomes-dir && echo inner > /export/becomes-dir/inner "
               "&& head -c 3000000 /dev/urandom > /export/mender-artifact-storage/uploaded.mender "
               "&& chmod 600 /export/mender-artifact-storage/uploaded.mender")
    with sandbox.mongo() as m:
        m.deviceauth.devices.insert_one({"_id": "written-during-pre-copy", "status": "pending"})
        at_quiet = mongo_snapshot(m)
    files_at_quiet = artifact_snapshot(sandbox)

    quiet = finish_backup(sandbox.client, sandbox.integration, store, pre, holds_lock=True, log=lambda m: None)
    manifest = quiet.manifest
    deltas = [o for o in manifest.objects if o.kind == VOLUME_DELTA]
    assert manifest.verified and [o.name for o in deltas] == ["mender-artifacts"]
    assert sorted(deltas[0].removed) == ["becomes-dir", "old-dir"]
    assert deltas[0].size < 4 * 2**20 < sum(o.size for o in manifest.objects if o.kind == VOLUME)
    assert quiet.changed["mender-artifacts"] >= 5
    assert read_manifest(store, manifest.key).objects == manifest.objects  # signed, removal list included

    report = restore_drill(sandbox.client, store, manifest, project_states(sandbox.client)["mender-mongo"].image,
                           host_id="sandbox-host", log=lambda m: None)
    assert report.passed, report.differences

    # Damage, then restore: the state at the quiet period comes back, not the pre-copy's.
    _sh(minio, "echo x > /export/mender-artifact-storage/uploaded.mender && mkdir -p /export/old-dir && rm -rf /export/becomes-dir")
    with sandbox.mongo() as m:
        m.deviceauth.devices.delete_many({})
    restore_backup(sandbox.client, sandbox.integration, store, manifest, host_id="sandbox-host",
                   stability_window=2, log=lambda m: None)
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == at_quiet
    assert artifact_snapshot(sandbox) == files_at_quiet
    # The pre-copy's `find`/`tar` helpers run the mongo image (its VOLUMEs: /data/db, and the real
    # images /data/configdb too): each took its anonymous volumes with it.
    assert anonymous_dangling_volumes(sandbox.client) - anonymous_before == set()
