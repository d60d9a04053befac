"""The webhook automation end to end on the session's Prefect test server (no Docker): real
flow runs, the server's trigger and action services, a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The server renders `flow_run|ui_url` from its own PREFECT_UI_URL; the harness server inherits
# this process's environment when it starts (after collection). A link base only, never called.
os.environ.setdefault("PREFECT_UI_URL", "http://prefect-ui.invalid")

from prefect import flow  # noqa: E402
from prefect.automations import Automation  # noqa: E402
from prefect.blocks.webhook import Webhook  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.flow_runs import pause_flow_run  # noqa: E402
from prefect.runtime import flow_run as current_run  # noqa: E402
from prefect.states import State  # noqa: E402

from mender_upgrade.deployments.notifications import (  # noqa: E402
    AUTOMATION_NAME, ROLLED_BACK_EVENT, WEBHOOK_BLOCK_NAME, apply_notifications, emit_rolled_back)
from mender_upgrade.flows.approvals import Binding, ask_approval  # noqa: E402
from mender_upgrade.tasks.errors import UpgradeError  # noqa: E402
from tests.flowrun import everything_recorded  # noqa: E402
from tests.unit.test_redaction import SECRET as RENAMED_KEYS_SECRET  # noqa: E402
from tests.unit.test_redaction import renamed_secret_key_description  # noqa: E402


@dataclass
class Receiver:
    url: str
    posts: list[dict] = field(default_factory=list)

    def for_run(self, run_id: str) -> list[dict]:
        return [p for p in self.posts if p.get("flow_run_id") == run_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """An HTTP server on a random 127.0.0.1 port keeping every JSON body POSTed to it."""
    posts: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Receiver(url=f"http://127.0.0.1:{server.server_port}/hooks/secret-token", posts=posts)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def notifications(prefect_api, receiver: Receiver) -> Iterator[Receiver]:
    """The automation applied (twice: it must be idempotent); removed afterwards so later
    upgrade-mender runs in this session do not call a receiver that is gone."""
    first = apply_notifications(receiver.url)
    assert apply_notifications(receiver.url) == first
    yield receiver
    Automation.read(id=first).delete()
    Webhook.delete(WEBHOOK_BLOCK_NAME)


def wait_until(condition: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def run_id_of(state: State) -> str:
    return str(state.state_details.flow_run_id)


@flow(name="upgrade-mender")
def approval_times_out() -> None:
    pause_flow_run(timeout=2, poll_interval=1, key="plan")


@flow(name="upgrade-mender")
def upgrade_fails() -> None:
    raise RuntimeError("preflight failed")


@flow(name="upgrade-mender")
def upgrade_rolled_back() -> None:
    emit_rolled_back(str(current_run.id), "cycle 2.7.2 failed; back on 2.6.4")
    raise RuntimeError("upgrade to 2.7.2 failed and was rolled back")


@flow(name="restore-drill")
def drill_fails() -> None:
    raise RuntimeError("restore drill found 3 differences")


@flow(name="some-other-flow")
def other_flow_pauses_and_fails() -> None:
    pause_flow_run(timeout=2, poll_interval=1)


def test_automation_is_one_by_name(notifications: Receiver) -> None:
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(AUTOMATION_NAME)) == 1
    block = Webhook.load(WEBHOOK_BLOCK_NAME)
    assert block.url.get_secret_value() == notifications.url
    assert "secret-token" not in repr(block) and "secret-token" not in str(block.model_dump())


def test_webhook_called_for_pause_failure_and_rollback_of_upgrade_runs_only(notifications: Receiver) -> None:
    # The other flow runs first: once the later upgrade runs' calls arrived, its would have too.
    other = run_id_of(other_flow_pauses_and_fails(return_state=True))
    paused = run_id_of(approval_times_out(return_state=True))
    failed = run_id_of(upgrade_fails(return_state=True))
    rolled_back = run_id_of(upgrade_rolled_back(return_state=True))
    expected = {(paused, "prefect.flow-run.Paused"), (paused, "prefect.flow-run.Failed"),
                (failed, "prefect.flow-run.Failed"),
                (rolled_back, ROLLED_BACK_EVENT), (rolled_back, "prefect.flow-run.Failed")}

    def received() -> set[tuple[str, str]]:
        return {(p["flow_run_id"], p["event"]) for p in notifications.posts}

    wait_until(lambda: expected <= received(), what=f"webhook calls {expected}, got {received()}")
    assert notifications.for_run(other) == []
    for run_id, event in expected:
        post = next(p for p in notifications.for_run(run_id) if p["event"] == event)
        assert post["flow"] == "upgrade-mender"
        assert post["ui_url"].endswith(f"/runs/flow-run/{run_id}")
        assert post["flow_run_name"] in post["text"] and post["ui_url"] in post["text"]
    rollback = next(p for p in notifications.for_run(rolled_back) if p["event"] == ROLLED_BACK_EVENT)
    assert rollback["reason"] == "cycle 2.7.2 failed; back on 2.6.4"
    states = {(p["flow_run_id"], p["event"]): p["state"] for p in notifications.posts}
    assert states[paused, "prefect.flow-run.Paused"] == "Paused"
    assert states[failed, "prefect.flow-run.Failed"] == "Failed"


def _crashed_run(flow_obj) -> str:
    """A run of `flow_obj` whose process died: Running, then Crashed as Prefect records a dead
    process (what `mender-upgrade unlock --force` and the server's crash detection do)."""
    from prefect.states import Crashed, Running
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow_obj)
        client.set_flow_run_state(run.id, Running(), force=True)
        client.set_flow_run_state(run.id, Crashed(message="the run's process was killed"), force=True)
    return str(run.id)


def test_webhook_called_for_crashed_upgrades_and_failed_or_crashed_drills(notifications: Receiver) -> None:
    crashed_upgrade = _crashed_run(upgrade_fails)
    failed_drill = run_id_of(drill_fails(return_state=True))
    crashed_drill = _crashed_run(drill_fails)
    expected = {(crashed_upgrade, "prefect.flow-run.Crashed", "upgrade-mender"),
                (failed_drill, "prefect.flow-run.Failed", "restore-drill"),
                (crashed_drill, "prefect.flow-run.Crashed", "restore-drill")}

    def received() -> set[tuple[str, str, str]]:
        return {(p["flow_run_id"], p["event"], p["flow"]) for p in notifications.posts}

    wait_until(lambda: expected <= received(), what=f"webhook calls {expected}, got {received()}")
    crash = next(p for p in notifications.for_run(crashed_upgrade) if p["event"] == "prefect.flow-run.Crashed")
    assert crash["state"] == "Crashed" and crash["state_message"] == "the run's process was killed"
    assert "secret-token" not in json.dumps(notifications.posts)  # the webhook's own token is never echoed


S3_SECRET = "s3-secret-Zq8vW2kPa9"  # what a run's settings hold (backup.secret_access_key)
GIT_TOKEN = "ghp_gitToken7Hx3Lm"  # the clone's remote URL credentials


@flow(name="upgrade-mender")
def upgrade_fails_quoting_secrets(integration: str) -> None:
    """Fails the way a real run does when `./run config` breaks: its output tail - a resolved compose
    config holding the S3 secret and a git URL with a token - becomes the failure message."""
    from mender_upgrade.tasks.containers import run_compose
    run_compose(Path(integration), ["config"], env={"AWS_SECRET_ACCESS_KEY": S3_SECRET})


def test_no_webhook_payload_carries_a_secret_the_run_knew(notifications: Receiver, tmp_path) -> None:
    production = tmp_path / "integration" / "production"
    production.mkdir(parents=True)
    (production / "run").write_text(
        "#!/bin/sh\n"
        "echo '  minio:'\n"
        "echo \"    MINIO_SECRET_KEY: $AWS_SECRET_ACCESS_KEY\"\n"
        f"echo 'fatal: unable to access https://mender:{GIT_TOKEN}@git.invalid/integration.git/'\n"
        "exit 1\n")
    (production / "run").chmod(0o755)
    failed = run_id_of(upgrade_fails_quoting_secrets(str(tmp_path / "integration"), return_state=True))
    wait_until(lambda: any(p["event"] == "prefect.flow-run.Failed" for p in notifications.for_run(failed)),
               what="the Failed webhook call of the run quoting secrets")
    message = next(p for p in notifications.for_run(failed) if p["event"] == "prefect.flow-run.Failed")["state_message"]
    sent = json.dumps(notifications.posts)
    for secret in (S3_SECRET, GIT_TOKEN, "secret-token"):  # the last: the webhook URL's own token
        assert secret not in sent
    assert "./run config" in message and "MINIO_SECRET_KEY" in message and "**********" in message  # quoted, masked


@flow(name="upgrade-mender")
def approval_over_a_renamed_secret_key() -> None:
    """The approval gate of a hop whose template renames a secret-bearing key: its form (a run
    input) holds the description; nobody answers, the pause times out, the run fails."""
    run_id, digest = str(current_run.id), "d" * 64
    decision = ask_approval("plan", renamed_secret_key_description(run_id, digest), 2, 1, Binding(run_id, digest))
    raise UpgradeError(f"approval `plan` {decision.outcome}: {decision.comment}")


def test_the_secret_of_a_renamed_key_reaches_no_run_input_event_or_webhook(notifications: Receiver) -> None:
    """The secret scan over what a real server keeps and sends for that run: its flow-run inputs
    (the approval form and description), its events, its logs and state, and the webhook payloads."""
    run_id = run_id_of(approval_over_a_renamed_secret_key(return_state=True))
    expected = {"prefect.flow-run.Paused", "prefect.flow-run.Failed"}
    wait_until(lambda: expected <= {p["event"] for p in notifications.for_run(run_id)},
               what=f"the Paused and Failed webhook calls of {run_id}")
    # The server's automations send the webhook as soon as an event arrives; its event persister
    # writes events to the database in batches, seconds later. The scan must read them too.
    recorded = ""

    def both_events_recorded() -> bool:
        nonlocal recorded
        recorded = everything_recorded(run_id)[1]
        return all(f'"event":"{event}"' in recorded.replace(" ", "") for event in expected)

    wait_until(both_events_recorded, what=f"the Paused and Failed events of {run_id} in the server's database")
    # What the scan reads holds the description, the renamed key and the events: the secret had
    # every chance to be there.
    assert "`services.minio.environment.MINIO_SECRET_KEY`: customized" in recorded
    sent = json.dumps(notifications.for_run(run_id))
    assert RENAMED_KEYS_SECRET not in recorded and RENAMED_KEYS_SECRET not in sent
    assert "minio-secret-here" not in recorded + sent
