"""MongoDB major-hop rules (pure)."""

from __future__ import annotations

import pytest

from mender_upgrade.tasks.mongo_upgrade import MongoHopRefused, check_mongo_hop, cpu_has_avx


def test_one_major_with_matching_fcv_and_avx_is_allowed():
    check_mongo_hop("4.4", "5.0", "4.4", has_avx=True)
    check_mongo_hop("3.6", "4.0", "3.6", has_avx=False)


@pytest.mark.parametrize("old,new,fcv,avx,words", [
    ("4.4", "6.0", "4.4", True, "skips major(s) 5.0"),
    ("3.6", "4.4", "3.6", True, "skips major(s) 4.0, 4.2"),
    ("5.0", "4.4", "5.0", True, "downgrade"),
    ("4.4", "5.0", "4.2", True, "featureCompatibilityVersion is 4.2"),
    ("4.4", "5.0", "4.4", False, "AVX"),
    ("4.4", "9.9", "4.4", True, "unknown MongoDB major"),
])
def test_refusals(old, new, fcv, avx, words):
    with pytest.raises(MongoHopRefused) as err:
        check_mongo_hop(old, new, fcv, has_avx=avx)
    assert words in str(err.value)


def test_avx_detection_reads_cpu_flags(tmp_path):
    with_avx, without = tmp_path / "a", tmp_path / "b"
    with_avx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16x\n")
    assert cpu_has_avx(with_avx) and not cpu_has_avx(without)
