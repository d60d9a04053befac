"""Backup namespaces, manifest signatures and the local target's permissions (no Docker)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat

import pytest

from mender_upgrade.tasks.backup import (BackupObject, Manifest, ManifestUntrusted, SigningKeyUnusable, list_backups,
                          load_signing_key, mark_in_use, prune_backups, read_manifest)
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.settings import BackupSettings
from mender_upgrade.tasks.store import LocalStore, TargetRefused, parse_target


def _settings(tmp_path) -> BackupSettings:
    return BackupSettings(target=f"file://{tmp_path}/backups", signing_key_file=tmp_path / "home" / "key")


def _manifest(store, backup_id: str, verified: bool = True, volume: str = "mender-artifacts") -> Manifest:
    """A backup as `create_backup` writes it: objects, then the signed manifest."""
    objects = []
    for kind, name, key in (("mongo", "mender-mongo", f"{backup_id}/mongo.archive.gz"),
                            ("volume", volume, f"{backup_id}/volumes/{volume}.tar")):
        data = f"{backup_id} {name}".encode()
        receipt = store.upload_stream(key, io.BytesIO(data))
        objects.append(BackupObject(key, kind, name, receipt.size, receipt.sha256, "none", None))
    manifest = Manifest(backup_id=backup_id, run_id="r", created_utc="2026-11-29T00:00:00Z", mode="hot",
                        integration_version="2.6.4", git_sha="0" * 40, image_digests={}, mongo_version="4.4",
                        feature_compatibility_version="4.4", counts={}, objects=objects, target=store.uri,
                        verified_utc="2026-11-29T00:01:00Z" if verified else None, host_id=store.host_id)
    store.put_bytes(manifest.key, manifest.to_json(store.signing_key))
    return manifest


@pytest.mark.parametrize("target,words", [("s3://bucket", "whole bucket"), ("s3://bucket/", "whole bucket"),
                                          ("file:///", "root folder"), ("file:///var/../etc", "'..'"),
                                          ("/var/backups", "not understood")])
def test_targets_without_a_prefix_are_refused(target, words):
    with pytest.raises(UpgradeError) as err:
        parse_target(target)
    assert words in str(err.value) and repr(target) in str(err.value)
    with pytest.raises(ValueError):
        BackupSettings(target=target)


def test_local_target_is_private_and_never_follows_symlinks(tmp_path):
    store = _settings(tmp_path).open_store("host-a")
    _manifest(store, "20261129T000000Z-aaaa")
    root = tmp_path / "backups"
    for folder, dirs, files in os.walk(root):
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700, folder
        for name in files:
            assert stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "key").st_mode) == 0o600

    outside = tmp_path / "outside"
    outside.write_text("precious")
    # A planted symlink as a partial file, as an object, and as a folder: never written through.
    os.symlink(outside, root / "host-a" / "20261129T000000Z-aaaa" / "new.partial")
    with pytest.raises(TargetRefused):
        store.put_bytes("20261129T000000Z-aaaa/new", b"x")
    os.symlink(outside, root / "host-a" / "evil")
    with pytest.raises(TargetRefused):
        store.get_bytes("evil")
    os.symlink(tmp_path, root / "host-a" / "linked-folder")
    with pytest.raises(TargetRefused):
        store.put_bytes("linked-folder/x", b"x")
    assert outside.read_text() == "precious"
    assert not [k for k in store.list_keys("") if k.startswith(("evil", "linked-folder"))]


def test_manifest_signature_is_required_and_checked(tmp_path):
    store = _settings(tmp_path).open_store("host-a")
    manifest = _manifest(store, "20261129T000000Z-aaaa")
    assert read_manifest(store, manifest.key) == manifest

    doc = json.loads(store.get_bytes(manifest.key))
    doc["objects"][0]["sha256"] = hashlib.sha256(b"forged").hexdigest()  # tampered hash, old signature
    store.put_bytes(manifest.key, json.dumps(doc).encode())
    with pytest.raises(ManifestUntrusted, match="does not match the signing key"):
        read_manifest(store, manifest.key)
    del doc["signature"]
    store.put_bytes(manifest.key, json.dumps(doc).encode())
    with pytest.raises(ManifestUntrusted, match="is not signed"):
        read_manifest(store, manifest.key)
    assert read_manifest(store, manifest.key, allow_unsigned=True).objects[0].sha256 == doc["objects"][0]["sha256"]
    assert list_backups(store) == []  # an untrusted manifest is never chosen (nor pruned)


@pytest.mark.parametrize("field,value,words", [
    ("name", "/etc", "not a Docker volume name"), ("name", "x;rm -rf /", "not a Docker volume name"),
    ("name", "$(reboot)", "not a Docker volume name"), ("key", "../../etc/passwd", "should be"),
    ("kind", "shell", "neither mongo nor volume")])
def test_malformed_manifest_is_refused_even_when_signed_or_allowed(tmp_path, field, value, words):
    store = _settings(tmp_path).open_store("host-a")
    manifest = _manifest(store, "20261129T000000Z-aaaa")
    setattr(manifest.objects[1], field, value)
    store.put_bytes(manifest.key, manifest.to_json(store.signing_key))  # signed with the right key
    for allow in (False, True):
        with pytest.raises(ManifestUntrusted, match=words):
            read_manifest(store, manifest.key, allow_unsigned=allow)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "key"
    key = load_signing_key(path)
    assert load_signing_key(path) == key and len(key) == 64
    os.chmod(path, 0o644)
    with pytest.raises(SigningKeyUnusable, match="chmod 600"):
        load_signing_key(path)
    os.chmod(path, 0o600)
    other = _settings(tmp_path / "elsewhere").open_store("host-a")
    assert other.signing_key != key  # another key: this host's manifests would not verify there


def test_two_hosts_sharing_a_target_never_prune_each_other(tmp_path):
    settings = _settings(tmp_path)
    a, b = settings.open_store("host-a"), settings.open_store("host-b")
    a1 = _manifest(a, "20261129T000000Z-aaaa")
    b1 = _manifest(b, "20261129T000001Z-bbbb")
    (tmp_path / "backups" / "host-b" / "left.partial").write_bytes(b"b's upload in progress")
    a2 = _manifest(a, "20261129T000003Z-aaaa")
    assert prune_backups(a, keep_last=1) == [a1.backup_id]
    assert a.abort_stale_uploads() == []
    assert [m.backup_id for m in list_backups(b)] == [b1.backup_id]
    assert (tmp_path / "backups" / "host-b" / "left.partial").exists()
    assert [m.backup_id for m in list_backups(a)] == [a2.backup_id]


def test_a_backup_in_use_by_a_run_is_never_pruned(tmp_path):
    store = _settings(tmp_path).open_store("host-a")
    used = _manifest(store, "20261129T000000Z-aaaa")
    mark_in_use(store, "run-1", used.backup_id)
    _manifest(store, "20261129T000001Z-aaaa")
    newest = _manifest(store, "20261129T000002Z-aaaa")
    assert prune_backups(store, keep_last=1) == ["20261129T000001Z-aaaa"]
    assert [m.backup_id for m in list_backups(store)] == [used.backup_id, newest.backup_id]
