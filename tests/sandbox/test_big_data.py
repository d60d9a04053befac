"""Real data sizes: the whole flow through `mender-upgrade run` with 1 GiB of artifacts, run the
way cron, CI or a wrapper script runs it (output captured, a timeout), and nothing of the tool
left running afterwards.

Before the fix the backup's progress callback ran in the S3 upload's worker threads, which lack
the Prefect settings of the CLI's local server: Prefect started a temporary server there, the
progress update got 404 ("Artifact not found"), the run failed, and the temporary server kept
the caller's stdout/stderr open, so `subprocess.run(capture_output=True)` hung until its timeout.
It takes more than 16 MiB of data (the progress step) to happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mender_upgrade.flows.runner import ensure_local_server
from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.backup import list_backups
from mender_upgrade.tasks.settings import load_settings
from tests.flowrun import flow_settings

pytestmark = pytest.mark.sandbox
RUN_TIMEOUT_S = 600
MARKER = "MENDER_UPGRADE_TEST_MARKER"


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds `marker` (the tool's
    children inherit it, however they detach: new session, double fork)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> tuple[subprocess.CompletedProcess | str, float, dict]:
    """`mender-upgrade ARGS` as a caller that captures its output runs it; returns the result
    (or, when the output pipes were still open at the timeout, the output so far), its duration
    and the tool's processes still alive afterwards (killed, so none stays)."""
    marker = f"{MARKER}={uuid.uuid4().hex}"
    cli = Path(sys.executable).parent / "mender-upgrade"
    start = time.monotonic()
    try:
        result = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=timeout,
                                env=env | dict([marker.split("=", 1)]), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        result = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                         for part in (exc.stdout, exc.stderr))
    finally:
        time.sleep(1)  # a child that outlives the command is still there a second later
        left = processes_with(marker)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return result, time.monotonic() - start, left


@pytest.fixture
def local_prefect_server(tmp_path: Path):
    """The machine's local Prefect server, as a first `mender-upgrade` command leaves it (port
    4200: hold the docker lock); started here, outside the command under test, so that every
    process left by the command is a leak."""
    home = tmp_path / "home" / "prefect"  # the command's MENDER_UPGRADE_HOME: same server, same auth string
    api = ensure_local_server(home, log=lambda m: None)
    yield api
    os.killpg(int((home / "server.pid").read_text()), signal.SIGTERM)


def test_upload_progress_reaches_prefect_from_the_task_thread(prefect_api, s3_settings):
    """The root of the bug above, in seconds: a task's S3 upload of more than 16 MiB (several
    parts in flight) reports progress to its Prefect progress artifact, and every progress call
    runs in the task's own thread, where the run's settings and client are."""
    import io
    import threading

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from mender_upgrade.tasks.steps import _progress_callback

    called_in: set[int] = set()

    @task
    def upload() -> tuple[str, int, int]:
        progress, artifact_id = _progress_callback("upload")

        def counting(n: int) -> None:
            called_in.add(threading.get_ident())
            progress(n)

        receipt = s3_settings.open_store().upload_stream("progress/48mib", io.BytesIO(os.urandom(48 * 2**20)), counting)
        return str(artifact_id), threading.get_ident(), receipt.size

    @flow
    def uploads() -> tuple[str, int, int]:
        return upload()

    artifact_id, task_thread, size = uploads()
    assert size == 48 * 2**20 and called_in == {task_thread}
    with get_client(sync_client=True) as client:
        artifact, = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
    assert artifact.type == "progress" and artifact.data == 4.8  # 48 MiB on the 0-99 "MiB / 10" scale
    assert artifact.description == "upload: 48 MiB"


def test_run_with_a_gib_of_artifacts_completes_and_leaves_nothing_running(sandbox, local_prefect_server, tmp_path):
    stack.mark_dirty(sandbox)
    t = time.monotonic()
    bulk = stack.seed_bulk(sandbox, 1)
    seeded_s = time.monotonic() - t
    assert len(bulk) == 4 and len(set(bulk.values())) == 4  # 4 x 256 MiB, all different
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    # The manifest signing key, where both the command and this test find it.
    data["backup"]["signing_key_file"] = str(tmp_path / "backup-signing.key")
    config = tmp_path / "upgrade.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | {
        "MENDER_UPGRADE_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    result, took, left = run_cli(["run", "--config", str(config), "--yes"], env, RUN_TIMEOUT_S)

    print(f"\nseeded 1 GiB in {seeded_s:.1f} s; `mender-upgrade run` took {took:.1f} s")
    assert not isinstance(result, str), (f"still holding the output pipes after {RUN_TIMEOUT_S} s; processes left: "
                                         f"{left}; output:\n{result[-4000:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "completed" in result.stdout, result.stdout[-3000:]
    assert "Artifact not found" not in result.stdout + result.stderr
    assert left == {}, f"processes of the tool outlived `mender-upgrade run`: {left}"
    newest = [m for m in list_backups(load_settings(data).backup_store()) if m.verified][-1]
    artifacts = next(o for o in newest.objects if o.name == "mender-artifacts")
    assert artifacts.size > 2**30  # the whole GiB went through the backup
