"""Restore through the real path (the CLI, Docker, the sandbox's S3) under a real memory limit:
the restore streams, so a 256 MiB artifact restores inside a 300 MiB memory cgroup with its data
equal. bench/restore_real.py runs the same with 4 GiB (minutes: not on every suite run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.restore_real import MEMORY_CGROUP, restore_under_limit
from mender_upgrade.sandbox import stack

pytestmark = pytest.mark.sandbox
LIMIT_MIB = 300


def test_the_limit_is_enforced(tmp_path):
    """The cap is real here: a process holding more than it is killed (else the test below proves nothing)."""
    group = MEMORY_CGROUP / f"mender-upgrade-probe-{tmp_path.name[-8:]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(LIMIT_MIB * 2**20))
        hog = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -c 'b = bytearray(400 * 2**20); print(len(b))'"
        proc = subprocess.run(["sh", "-c", hog], capture_output=True, text=True, timeout=60)
    finally:
        group.rmdir()
    assert proc.returncode != 0 and not proc.stdout, (proc.returncode, proc.stdout)


def test_restore_of_a_big_artifact_stays_under_a_memory_limit(sandbox):
    stack.mark_dirty(sandbox)  # bulk artifacts added
    result = restore_under_limit(sandbox, 0.25, LIMIT_MIB)
    print(f"\n{result}")
    assert result["exit"] == 0, result["output"]
    assert result["oom_kills"] == 0 and result["peak_rss_mib"] < LIMIT_MIB
    assert result["data_equal"], "the artifact volume does not read back as it was backed up"
