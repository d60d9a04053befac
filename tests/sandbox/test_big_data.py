"""Real data sizes: the whole flow with 1 GiB of artifacts every way users run it — `mender-upgrade
run`, `demo`, a deployment served by `mender-upgrade serve` and one picked up by a `prefect worker`
— each run the way cron, CI, systemd or a wrapper script runs it (`subprocess.run` capturing the
output, with a timeout; the long-running ones stopped with SIGTERM), and no process of the tool
left running afterwards.

Before the fix the backup's progress callback ran in the S3 upload's worker threads, which lack
the Prefect settings of the CLI's local server: Prefect started a temporary server there, the
progress update got 404 ("Artifact not found"), the run failed, and the temporary server kept
the caller's stdout/stderr open, so `subprocess.run(capture_output=True)` hung until its timeout.
It takes more than 16 MiB of data (the progress step) to happen.

One local Prefect server serves the module (started here, outside the commands under test, so
every process a command leaves is a leak). The tests share the seeded GiB: `run` and `demo` each
upgrade 2.6.4 to 2.7.2 (the demo seeds its own sandbox with `--artifacts-gib 1`), and the served
and the worker's run take the stack they leave from 2.7.2 to 3.0.2 (`gib_sandbox` brings one up
when run alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from mender_upgrade.deployments.definitions import deployment_names
from mender_upgrade.flows.cli.upgrade import demo_settings
from mender_upgrade.flows.runner import ensure_local_server, local_auth_string
from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.sandbox.seed import BULK_DIR
from mender_upgrade.tasks.backup import list_backups
from mender_upgrade.tasks.containers import project_states
from mender_upgrade.tasks.host_policy import HOST_FILE_ENV
from mender_upgrade.tasks.settings import load_settings
from tests.flowrun import flow_settings, report_of
from tests.test_serve_shutdown import wait_for

pytestmark = pytest.mark.sandbox
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 600
MARKER = "MENDER_UPGRADE_TEST_MARKER"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


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


def _parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


@dataclass
class Ended:
    """How a command ended: its result (None when it still held the output pipes at the timeout),
    its output, its duration, and the tool's processes still alive a second later (then killed)."""
    result: subprocess.CompletedProcess | None = None
    output: str = ""
    took: float = 0.0
    left: dict[int, str] = field(default_factory=dict)

    def check(self, what: str, returncode: int = 0) -> None:
        assert self.result is not None, (f"{what} still held the output pipes at its timeout; processes left: "
                                         f"{self.left}; output:\n{self.output[-4000:]}")
        assert self.result.returncode == returncode, f"{what} exited {self.result.returncode}:\n{self.output[-4000:]}"
        assert "Artifact not found" not in self.output
        assert self.left == {}, f"processes of the tool outlived {what}: {self.left}"


class Command:
    """`ARGV` as a caller that captures its output runs it (`subprocess.run`, a timeout), with a
    marker in its environment that finds every process it leaves."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> None:
        self.argv, self.timeout, self.cwd = argv, timeout, cwd
        self.marker = uuid.uuid4().hex
        self.env = env | {MARKER: self.marker}
        self.ended = Ended()

    def run(self) -> Ended:
        start = time.monotonic()
        try:
            self.ended.result = subprocess.run(self.argv, capture_output=True, text=True, timeout=self.timeout,
                                               env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL)
            self.ended.output = self.ended.result.stdout + self.ended.result.stderr
        except subprocess.TimeoutExpired as exc:
            self.ended.output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                                        for part in (exc.stdout, exc.stderr))
        finally:
            self.ended.took = time.monotonic() - start
            time.sleep(1)  # a child that outlives the command is still there a second later
            self.ended.left = processes_with(f"{MARKER}={self.marker}")
            for pid in self.ended.left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.ended


def cli(*args: str) -> list[str]:
    return [str(BIN / "mender-upgrade"), *args]


@contextmanager
def serving(command: Command) -> Iterator[Command]:
    """A long-running command (`serve`, a worker) run as above in a thread, and stopped at the
    end with SIGTERM, as systemd stops it; its `ended` is filled in once it has stopped."""
    thread = threading.Thread(target=command.run, daemon=True)
    thread.start()
    try:
        yield command
    finally:
        me = os.getpid()
        for pid in processes_with(f"{MARKER}={command.marker}"):
            try:
                if _parent(pid) == me:
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass
        thread.join(command.timeout)


def alive(command: Command) -> bool:
    assert command.ended.took == 0.0, f"{command.argv[:2]} ended early:\n{command.ended.output[-4000:]}"
    return True


@dataclass
class LocalServer:
    home: Path  # MENDER_UPGRADE_HOME of every command: same server, same auth string, same signing key
    api: str
    auth: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command run by hand: no Prefect API or S3 keys of the test's own."""
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("PREFECT_API", "AWS_")) and k != "DO_NOT_TRACK"} | {
            "MENDER_UPGRADE_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


@pytest.fixture(scope="module")
def local_server(tmp_path_factory) -> Iterator[LocalServer]:
    """The machine's local Prefect server, as a first `mender-upgrade` command leaves it (port
    4200: hold the docker lock)."""
    home = tmp_path_factory.mktemp("tool-home")
    api = ensure_local_server(home / "prefect", log=lambda m: None)
    yield LocalServer(home, api, local_auth_string(home / "prefect"))
    os.killpg(int((home / "prefect" / "server.pid").read_text()), signal.SIGTERM)


def bulk_bytes(sandbox: stack.Sandbox) -> int:
    minio = sandbox.client.containers.get(project_states(sandbox.client)["minio"].container_id)
    code, out = minio.exec_run(["du", "-sb", f"/export/{BULK_DIR}"])
    return int(out.split()[0]) if code == 0 else 0


def gib_sandbox(version: str) -> stack.Sandbox:
    """The sandbox at `version`, every service running, with 1 GiB of bulk artifacts: as the
    test before left it (one seeding shared), else brought up so."""
    try:
        sandbox = stack.attach()
        states = project_states(sandbox.client)
        if (stack.status()["version"] == version and states and all(s.status == "running" for s in states.values())
                and bulk_bytes(sandbox) >= 2**30):
            return sandbox
    except SandboxError:
        pass
    return stack.up(version, artifacts_gib=1)


def newest_artifact_backup_size(settings: dict, server: LocalServer) -> int:
    """Size of the artifact volume in the newest verified backup of `settings`' target (read with
    the commands' signing key)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MENDER_UPGRADE_HOME", str(server.home))
        newest = [m for m in list_backups(load_settings(settings).backup_store()) if m.verified][-1]
    return next(o.size for o in newest.objects if o.name == "mender-artifacts")


def host_file(path: Path, host: str, sandbox: stack.Sandbox) -> tuple[Path, dict]:
    """The host file (root-owned, 0600) holding what protects the server, the S3 secret
    included; returns it and the demo settings upgrading to 3.0.2 it goes with."""
    settings = demo_settings(sandbox, "3.0.2").model_dump(mode="json")
    backup = {k: v for k, v in settings["backup"].items() if v is not None} | {
        "target": f"s3://{sandbox.s3.bucket}/{host}", "secret_access_key": sandbox.s3.secret_key}
    path.write_text(f'host_id = "{host}"\nintegration_dir = "{sandbox.integration}"\n[backup]\n'
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in backup.items()))
    path.chmod(0o600)
    os.chown(path, 0, 0)
    return path, settings | {"host_id": host, "backup": backup}


def run_choices(settings: dict) -> dict:
    """What a run may choose (the rest is the host file's)."""
    return {k: settings[k] for k in ("host_id", "target_version", "stability_window_s", "window", "gateway_smoke")}


def approve_and_wait(client, run_id, approver: str, command: Command) -> StateType:
    """Wait for the run to pause at its approval, approve it through the API, wait for its end."""
    def state():
        s = client.read_flow_run(run_id).state
        return s.type if s else None
    wait_for(lambda: alive(command) and state() == StateType.PAUSED
             and "schema" in (client.read_flow_run(run_id).state.state_details.run_input_keyset or {}),
             300, "the run to pause for approval")
    # The marker reaches the run's own process (what a leak check after the stop must see).
    started = processes_with(f"{MARKER}={command.marker}")
    print(f"\nprocesses of {command.argv[1:3]} at the approval: {started}")
    assert [pid for pid in started if _parent(pid) != os.getpid()], f"no run process carries the marker: {started}"
    time.sleep(1)  # the form is saved right after the pause (Prefect #11905)
    resume_flow_run(run_id, run_input={"approve": True, "comment": "1 GiB", "approver": approver})
    return wait_for(lambda: state() in FINAL and state(), 600, "the run to end")


def test_upload_progress_reaches_prefect_from_the_task_thread(prefect_api, s3_settings):
    """The root of the bug above, in seconds: a task's S3 upload of more than 16 MiB (several
    parts in flight) reports progress to its Prefect progress artifact, and every progress call
    runs in the task's own thread, where the run's settings and client are."""
    import io

    from prefect import flow, task
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


def test_run_with_a_gib_of_artifacts_completes_and_leaves_nothing_running(sandbox, local_server, tmp_path):
    stack.mark_dirty(sandbox)
    t = time.monotonic()
    bulk = stack.seed_bulk(sandbox, 1)
    seeded_s = time.monotonic() - t
    assert len(bulk) == 4 and len(set(bulk.values())) == 4  # 4 x 256 MiB, all different
    settings = flow_settings(sandbox, "2.7.2", cleanup_apply=False)
    data = settings.model_dump(mode="json")
    data["backup"]["secret_access_key"] = sandbox.s3.secret_key
    config = tmp_path / "upgrade.yaml"
    config.write_text(yaml.safe_dump(data))

    ended = Command(cli("run", "--config", str(config), "--yes"), local_server.env(), RUN_TIMEOUT_S).run()

    print(f"\nseeded 1 GiB in {seeded_s:.1f} s; `mender-upgrade run` took {ended.took:.1f} s")
    ended.check("`mender-upgrade run`")
    assert "completed" in ended.result.stdout, ended.output[-3000:]
    assert newest_artifact_backup_size(data, local_server) > 2**30  # the whole GiB went through


def test_serve_registers_on_the_local_server_and_its_manual_run_completes(_sandbox_session, local_server, tmp_path):
    """`mender-upgrade serve --config FILE` as a new user runs it: no PREFECT_API_URL, the S3 keys
    in the host file. It registers on the local server (127.0.0.1:4200, the one `run`, `demo` and
    the UI use), keeps what the host file owns (the secret key above all) out of the deployment's
    parameters, and a run of its manual deployment takes them from the host file, pauses for
    approval and upgrades the sandbox, 1 GiB of artifacts included; SIGTERM then ends `serve`
    and everything it started."""
    sandbox = gib_sandbox("2.7.2")
    stack.mark_dirty(sandbox)
    host = f"served-{uuid.uuid4().hex[:6]}"
    hosts, settings = host_file(tmp_path / "host.toml", host, sandbox)
    config = tmp_path / "mender-upgrade.yaml"  # only what a run may choose
    config.write_text(yaml.safe_dump(run_choices(settings)))
    env = local_server.env(PREFECT_RUNNER_POLL_FREQUENCY="1", **{HOST_FILE_ENV: str(hosts)})
    with (serving(Command(cli("serve", "--config", str(config)), env, RUN_TIMEOUT_S + 300)) as serve,
          temporary_settings({PREFECT_API_URL: local_server.api, PREFECT_API_AUTH_STRING: local_server.auth}),
          get_client(sync_client=True) as client):
        def registered():
            alive(serve)
            _, manual, drill = deployment_names(host)
            try:
                return (client.read_deployment_by_name(f"upgrade-mender/{manual}"),
                        client.read_deployment_by_name(f"restore-drill/{drill}"))
            except ObjectNotFound:  # not registered yet
                return None
        deployment, drill = wait_for(registered, 120, "serve to register its deployments on 127.0.0.1:4200")
        assert drill.name.startswith(host) and "host_id" not in drill.parameters["settings"]  # host-owned
        # Nothing the host file owns is in the (API-readable, UI-editable) parameters.
        assert "backup" not in deployment.parameters["settings"]
        assert "integration_dir" not in deployment.parameters["settings"]
        assert sandbox.s3.secret_key not in str(deployment.parameters)

        run = client.create_flow_run_from_deployment(deployment.id)
        final = approve_and_wait(client, run.id, "carol", serve)
        report = report_of(str(run.id))
        assert final == StateType.COMPLETED, report
        assert "**completed**" in report and "approval `plan`: approved, typed name carol" in report
    serve.ended.check("`mender-upgrade serve` stopped with SIGTERM")
    assert sandbox.s3.secret_key not in serve.ended.output
    assert stack.status()["version"] == "3.0.2"
    assert newest_artifact_backup_size(settings, local_server) > 2**30


def test_demo_with_a_gib_of_artifacts_completes_and_leaves_nothing_running(_sandbox_session, local_server):
    """The README's main job with `--yes --artifacts-gib 1`: its own sandbox up (2.6.4, 1 GiB
    seeded), the upgrade to 2.7.2, the report, exit 0 and nothing of the tool left running (the
    sandbox and the local Prefect server stay up by design)."""
    try:
        ended = Command(cli("demo", "--yes", "--artifacts-gib", "1"), local_server.env(), RUN_TIMEOUT_S).run()
    finally:
        stack.mark_dirty(stack.attach())  # after the demo's own `sandbox up`: it ends at 2.7.2
    print(f"\n`mender-upgrade demo --yes --artifacts-gib 1` took {ended.took:.1f} s")
    ended.check("`mender-upgrade demo`")
    assert "wrote 1 GiB of artifacts" in ended.output
    assert "completed" in ended.result.stdout, ended.output[-3000:]
    sandbox = stack.attach()
    assert stack.status()["version"] == "2.7.2" and bulk_bytes(sandbox) >= 2**30
    demo = demo_settings(sandbox, "2.7.2").model_dump(mode="json")
    demo["backup"]["secret_access_key"] = sandbox.s3.secret_key  # the dump masks it
    assert newest_artifact_backup_size(demo, local_server) > 2**30


def test_prefect_worker_runs_the_manual_deployment_with_a_gib(_sandbox_session, local_server, tmp_path):
    """README "Workers" on the sandbox: the host's pool, `prefect --no-prompt deploy --all` of
    prefect.yaml, and a `prefect worker start` that runs the manual deployment (approved through
    the API) to a completed upgrade with 1 GiB of artifacts; SIGTERM then ends the worker and
    everything it started."""
    sandbox = gib_sandbox("2.7.2")
    stack.mark_dirty(sandbox)
    host = f"worker-{uuid.uuid4().hex[:6]}"
    hosts, settings = host_file(tmp_path / "host.toml", host, sandbox)
    env = local_server.env(PREFECT_API_URL=local_server.api, PREFECT_API_AUTH_STRING=local_server.auth,
                           MENDER_HOST=host, PREFECT_WORKER_QUERY_SECONDS="1", **{HOST_FILE_ENV: str(hosts)})
    pool = f"mender-{host}"
    Command([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process", "--base-job-template",
             str(REPO / "deployments" / "process_pool_template.json")], env, 120).run().check("work-pool create")
    Command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, 120, cwd=REPO).run().check("deploy")
    worker_dir = tmp_path / "worker"  # not the checkout: the flows come from the installed package
    worker_dir.mkdir()
    with (serving(Command([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                          env, RUN_TIMEOUT_S + 300, cwd=worker_dir)) as worker,
          temporary_settings({PREFECT_API_URL: local_server.api, PREFECT_API_AUTH_STRING: local_server.auth}),
          get_client(sync_client=True) as client):
        _, manual, _ = deployment_names(host)
        deployment = client.read_deployment_by_name(f"upgrade-mender/{manual}")
        assert deployment.work_pool_name == pool
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"settings": run_choices(settings)})
        alive(worker)
        final = approve_and_wait(client, run.id, "dave", worker)
        report = report_of(str(run.id))
        assert final == StateType.COMPLETED, report
        assert "**completed**" in report and "approval `plan`: approved, typed name dave" in report
    worker.ended.check("`prefect worker start` stopped with SIGTERM")
    assert stack.status()["version"] == "3.0.2"
    assert newest_artifact_backup_size(settings, local_server) > 2**30
