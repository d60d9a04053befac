"""Volume archives: which prod.yml volumes are backed up, and refusing hostile tar entries."""

from __future__ import annotations

import io
import tarfile

import pytest

from mender_upgrade.tasks.volumes import (InstallationVolumes, UnknownVolume, UnsafeArchive, checked_tar_chunks, digest_tar,
                           external_volumes, restore_volume, safe_member)


def test_external_volumes_of_both_compose_eras():
    old = "volumes:\n  mender-artifacts:\n    external:\n      name: mender-artifacts\n  mender-db:\n    external:\n      name: mender-db\n"
    new = "volumes:\n  artifacts:\n    external: true\n    name: mender-artifacts\n  scratch: {}\n  mender-db:\n    external: true\n"
    assert external_volumes(old) == ["mender-artifacts", "mender-db"]
    assert external_volumes(new) == ["mender-artifacts", "mender-db"]


def _tar(*members: tuple[str, bytes | None, str | None], kind: bytes = tarfile.SYMTYPE, mode: int = 0o644) -> bytes:
    """A tar of (name, data, link) members; a link member has type `kind`, a data member `mode`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = kind, link
                tar.addfile(info)
            else:
                info.size, info.mode = len(data or b""), mode
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def _special(name: str, kind: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("member,words", [
    (("/etc/passwd", b"x", None), "absolute path"),
    (("mender-artifacts/../../etc/cron.d/x", b"x", None), "'..'"),
    (("other-volume/file", b"x", None), "outside the volume folder"),
    (("mender-artifacts/link", None, "/etc/shadow"), "leaves the volume"),
    (("mender-artifacts/link", None, "../../root"), "leaves the volume"),
])
def test_hostile_entries_are_refused_before_anything_is_written(member, words):
    data = _tar(("mender-artifacts/ok.bin", b"fine", None), member)
    with pytest.raises(UnsafeArchive) as err:
        digest_tar(io.BytesIO(data), volume="mender-artifacts")
    assert words in str(err.value)
    with pytest.raises(UnsafeArchive):
        b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))


@pytest.mark.parametrize("kind,what", [(tarfile.FIFOTYPE, "FIFO"), (tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device")])
def test_devices_and_fifos_are_refused(kind, what):
    data = _special("mender-artifacts/trap", kind)
    with pytest.raises(UnsafeArchive) as err:
        b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))
    assert "special file" in str(err.value)
    with pytest.raises(UnsafeArchive):
        digest_tar(io.BytesIO(data), volume="mender-artifacts")


@pytest.mark.parametrize("link", ["/etc/shadow", "../x", "other-volume/file", "mender-artifacts/../../x"])
def test_hard_links_must_stay_in_the_volume(link):
    data = _tar(("mender-artifacts/a", b"abc", None), ("mender-artifacts/h", None, link), kind=tarfile.LNKTYPE)
    with pytest.raises(UnsafeArchive) as err:
        b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))
    assert "hard link" in str(err.value) or "absolute" in str(err.value)


def test_links_inside_the_volume_pass_and_setuid_bits_are_dropped():
    data = _tar(("mender-artifacts/sub/a", b"abc", None), ("mender-artifacts/bin", b"#!", None), mode=0o6755)
    links = _tar(("mender-artifacts/sub/up", None, "../bin"))  # a symlink up, still inside
    hard = _tar(("mender-artifacts/h", None, "mender-artifacts/bin"), kind=tarfile.LNKTYPE)
    for archive in (data, links, hard):
        b"".join(checked_tar_chunks(io.BytesIO(archive), "mender-artifacts"))
    copy = b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))
    with tarfile.open(fileobj=io.BytesIO(copy)) as tar:
        assert {m.name: m.mode for m in tar.getmembers()} == {"mender-artifacts/sub/a": 0o755,
                                                              "mender-artifacts/bin": 0o755}
    # Docker's archives carry the file-type bits in the mode: they stay, the set-id bits go.
    member = tarfile.TarInfo("mender-artifacts/bin")
    member.mode = 0o106755
    assert safe_member(member).mode == 0o100755


@pytest.mark.parametrize("name", ["/etc", "/", "x;rm -rf /", "$(reboot)", "-rf", "a", "../mender-db"])
def test_restore_refuses_names_that_are_not_docker_volume_names(name):
    with pytest.raises(UnknownVolume) as err:
        restore_volume(client=None, image="unused", volume=name, tar_stream=io.BytesIO(b""))
    assert repr(name) in str(err.value)


def test_only_this_installations_data_volumes_are_restorable():
    volumes = InstallationVolumes(archived=["mender-artifacts"], mongo_data=["mender-db"])
    volumes.require_restorable("mender-artifacts")
    for name in ("mender-db", "docker-registry-data", "/etc"):
        with pytest.raises(UnknownVolume):
            volumes.require_restorable(name)


def test_safe_archive_passes_through_with_the_same_files():
    data = _tar(("mender-artifacts/.minio.sys/format.json", b"{}", None), ("mender-artifacts/a", b"abc", None),
                ("mender-artifacts/rel", None, "a"))
    copy = b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))
    assert digest_tar(io.BytesIO(copy)).files == digest_tar(io.BytesIO(data)).files
