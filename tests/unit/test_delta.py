"""The pure delta logic: find listings, what changed, removal batches, the merged digest."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mender_upgrade.tasks.delta import LISTING_FORMAT, Entry, ListingUnreadable, compare_listings, merge_digest, parse_listing
from mender_upgrade.tasks.volumes import TarDigest, UnsafeArchive, removal_batches


def _entry(kind="f", size=1, mtime="1.0", ctime="1.0", inode=1, link="") -> Entry:
    return Entry(kind, size, mtime, ctime, "644", 0, 0, inode, link)


def _find(root) -> bytes:
    return subprocess.run(["find", str(root), "-mindepth", "1", "-printf", LISTING_FORMAT],
                          check=True, capture_output=True).stdout


@pytest.mark.skipif(not shutil.which("find"), reason="GNU find")
def test_listing_of_real_find_output_then_delta_after_changes(tmp_path):
    (tmp_path / "keep").write_text("same")
    (tmp_path / "change").write_text("old")
    (tmp_path / "gone-dir" / "deep").mkdir(parents=True)
    (tmp_path / "gone-dir" / "deep" / "f").write_text("x")
    (tmp_path / "becomes-dir").write_text("file")
    (tmp_path / "name\twith\nodd chars").write_text("odd")
    (tmp_path / "link").symlink_to("keep")
    before = parse_listing(_find(tmp_path))
    assert before["link"].kind == "l" and before["link"].link == "keep"
    assert before["name\twith\nodd chars"].size == 3 and before["gone-dir/deep"].kind == "d"

    (tmp_path / "change").write_text("new!")
    shutil.rmtree(tmp_path / "gone-dir")
    (tmp_path / "becomes-dir").unlink()
    (tmp_path / "becomes-dir").mkdir()
    (tmp_path / "becomes-dir" / "inner").write_text("i")
    (tmp_path / "added").write_text("a")
    delta = compare_listings(before, parse_listing(_find(tmp_path)))

    assert delta.removed == ["becomes-dir", "gone-dir"]  # children of a removed folder are not listed
    assert {"change", "added", "becomes-dir", "becomes-dir/inner"} <= set(delta.changed)
    assert "keep" not in delta.changed and "link" not in delta.changed
    assert delta.changed.index("becomes-dir") < delta.changed.index("becomes-dir/inner")


def test_same_size_and_mtime_but_new_ctime_or_inode_is_a_change():
    before = {"a": _entry(), "b": _entry(inode=2)}
    after = {"a": _entry(ctime="2.0"), "b": _entry(inode=3)}
    assert compare_listings(before, after).changed == ["a", "b"]
    assert compare_listings(before, dict(before)).empty


def test_parse_listing_refuses_partial_records():
    with pytest.raises(ListingUnreadable, match="whole entries"):
        parse_listing(b"f\x001\x00")
    with pytest.raises(ListingUnreadable, match="non-numeric"):
        parse_listing(b"f\x00big\x001\x001\x00644\x000\x000\x001\x00\x00p\x00")
    assert parse_listing(b"") == {}


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "./a"])
def test_removal_paths_must_stay_in_the_volume(bad):
    with pytest.raises(UnsafeArchive):
        removal_batches([bad], "/mender-upgrade/v")


def test_removal_batches_stay_below_the_limit():
    paths = [f"dir/file-{i:04d}" for i in range(500)]
    batches = removal_batches(paths, "/m/v", limit=1000)
    assert [p for b in batches for p in b] == [f"/m/v/{p}" for p in paths]
    assert len(batches) > 1 and all(sum(len(p) + 1 for p in b) <= 1000 for b in batches)


def test_merged_digest_is_base_minus_removed_plus_delta():
    base = TarDigest({"v": ("5", 0o755, 0, 0), "v/a": ("sha-a", 0o644, 0, 1), "v/d": ("5", 0o755, 0, 0),
                      "v/d/x": ("sha-x", 0o644, 0, 1), "v/dd": ("sha-dd", 0o644, 0, 1)})
    delta = TarDigest({"v/a": ("sha-a2", 0o600, 1, 2), "v/n": ("sha-n", 0o644, 0, 1)})
    merged = merge_digest(base, delta, "v", ["d"])
    assert merged.files == {"v": ("5", 0o755, 0, 0), "v/a": ("sha-a2", 0o600, 1, 2),
                            "v/dd": ("sha-dd", 0o644, 0, 1), "v/n": ("sha-n", 0o644, 0, 1)}
