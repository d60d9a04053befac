"""A big artifact restored through the real path under a real memory limit: `mender-upgrade
backup` of the running sandbox (S3 of the sandbox), the artifact files deleted, then
`mender-upgrade restore --manifest ...` in a cgroup-v1 memory group capped at LIMIT_MIB
(page cache included: the kernel reclaims it, an RSS above the cap is OOM-killed), under
/usr/bin/time -v. The data must read back equal.

    flock /work/docker.lock python bench/restore_real.py GIB [LIMIT_MIB]   # sandbox up first
Prints one JSON line: artifact GiB, restore seconds, the restore's peak RSS (MiB, /usr/bin/time)
and the group's peak usage (MiB, memory.max_usage_in_bytes), limit, data equal.
tests/sandbox/test_restore_memory.py runs the same with 256 MiB on every suite run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.seed import BULK_DIR
from mender_upgrade.tasks.containers import project_states

MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
CLI = Path(sys.executable).parent / "mender-upgrade"


def _artifact_sums(sandbox) -> dict[str, str]:
    """path -> sha256 of every file of the storage volume (read inside the storage container)."""
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    out = minio.exec_run(["sh", "-c", "cd /export && find . -type f -exec sha256sum {} +"]).output.decode()
    return {path.removeprefix("./"): sha for sha, path in (line.split(None, 1) for line in out.splitlines() if line.strip())}


def _cli(args: list[str], env: dict[str, str], limit_mib: int | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the CLI; with `limit_mib`, inside a fresh memory cgroup capped there, under /usr/bin/time -v."""
    if limit_mib is None:
        return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=1800), {}
    group = MEMORY_CGROUP / f"mender-upgrade-bench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_mib * 2**20))
        # The shell joins the group, then becomes time(1), which runs the CLI: all of them capped.
        command = f'echo $$ > {group}/cgroup.procs && exec /usr/bin/time -v "$@"'
        proc = subprocess.run(["sh", "-c", command, "sh", str(CLI), *args], env=env, capture_output=True, text=True,
                              timeout=1800)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        figures = {"peak_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None,
                   "group_peak_mib": round(int((group / "memory.max_usage_in_bytes").read_text()) / 2**20, 1),
                   "oom_kills": _oom_kills(group)}
    finally:
        group.rmdir()
    return proc, figures


def _oom_kills(group: Path) -> int:
    control = (group / "memory.oom_control").read_text()
    found = re.search(r"oom_kill (\d+)", control)
    return int(found.group(1)) if found else 0


def restore_under_limit(sandbox, gib: float, limit_mib: int) -> dict:
    """Seed `gib` GiB of artifacts, back up, delete them, restore capped at `limit_mib`; figures
    and whether the artifact volume reads back equal."""
    bulk = stack.seed_bulk(sandbox, gib)
    before = _artifact_sums(sandbox)
    assert set(bulk) <= set(before)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | {
        "AWS_ACCESS_KEY_ID": sandbox.s3.access_key, "AWS_SECRET_ACCESS_KEY": sandbox.s3.secret_key}
    target = f"s3://{sandbox.s3.bucket}/restore-memory-{uuid.uuid4().hex[:8]}"
    backup, _ = _cli(["backup", "--integration", str(sandbox.integration), "--target", target,
                      "--endpoint-url", sandbox.s3.url], env)
    if backup.returncode != 0:
        raise RuntimeError(f"backup failed: {backup.stdout[-2000:]}{backup.stderr[-2000:]}")
    uri = " ".join(backup.stdout.split()).split("verified backup: ")[1].split()[0]
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    assert minio.exec_run(["rm", "-rf", f"/export/{BULK_DIR}"]).exit_code == 0
    assert _artifact_sums(sandbox) != before  # the restore has something to bring back
    start = time.monotonic()
    restore, figures = _cli(["restore", "--manifest", uri, "--integration", str(sandbox.integration),
                             "--endpoint-url", sandbox.s3.url, "--yes"], env, limit_mib)
    took = time.monotonic() - start
    return {"artifact_gib": gib, "restore_s": round(took, 1), "limit_mib": limit_mib, **figures,
            "exit": restore.returncode, "output": (restore.stdout + restore.stderr)[-1500:],
            "data_equal": _artifact_sums(sandbox) == before}


def main(gib: float, limit_mib: int) -> None:
    sandbox = stack.attach()
    try:
        result = restore_under_limit(sandbox, gib, limit_mib)
    finally:
        stack.mark_dirty(sandbox)  # the bulk data stays: the next test session starts afresh
    if result["exit"] == 0:
        result.pop("output")
    print(json.dumps(result))


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 300)
