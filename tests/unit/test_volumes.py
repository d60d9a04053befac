"""Volume archives: which prod.yml volumes are backed up, and refusing hostile tar entries."""

from __future__ import annotations

import io
import tarfile

import pytest

from tasks.volumes import UnsafeArchive, checked_tar_chunks, digest_tar, external_volumes


def test_external_volumes_of_both_compose_eras():
    old = "volumes:\n  mender-artifacts:\n    external:\n      name: mender-artifacts\n  mender-db:\n    external:\n      name: mender-db\n"
    new = "volumes:\n  artifacts:\n    external: true\n    name: mender-artifacts\n  scratch: {}\n  mender-db:\n    external: true\n"
    assert external_volumes(old) == ["mender-artifacts", "mender-db"]
    assert external_volumes(new) == ["mender-artifacts", "mender-db"]


def _tar(*members: tuple[str, bytes | None, str | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
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


def test_safe_archive_passes_through_with_the_same_files():
    data = _tar(("mender-artifacts/.minio.sys/format.json", b"{}", None), ("mender-artifacts/a", b"abc", None),
                ("mender-artifacts/rel", None, "a"))
    copy = b"".join(checked_tar_chunks(io.BytesIO(data), "mender-artifacts"))
    assert digest_tar(io.BytesIO(copy)).files == digest_tar(io.BytesIO(data)).files
