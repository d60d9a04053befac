"""Running the flow from a terminal: a local Prefect server, terminal approvals, history."""

from __future__ import annotations

import base64
import contextvars
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName,
                                            FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterName)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import read_flow_run_input

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.run_record import FLOW_NAME, REPORT_KEY, ReportSummary, parse_description
from mender_upgrade.tasks.signatures import approval_payload, sign


AUTH_STRING_FILE = "api-auth-string"
ALLOW_UNAUTHENTICATED_ENV = "MENDER_UPGRADE_ALLOW_UNAUTHENTICATED_API"  # "1": the operator's explicit opt-out


class ApiNotOurs(UpgradeError):
    """Something answers where our API should be, but it is not our server (or not protected)."""


def local_auth_string(home: Path) -> str:
    """The local server's auth string: generated on first start, kept 0600 in `home`."""
    path = home / AUTH_STRING_FILE
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"mender-upgrade:{secrets.token_urlsafe(32)}\n")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ApiNotOurs(f"{path} (the local API's auth string) is readable or writable by others (mode {mode:04o})",
                         f"`chmod 600 {path}`")
    return path.read_text().strip()


def _status(api: str, path: str, auth: str | None) -> int:
    request = urllib.request.Request(f"{api}{path}", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def require_protected(api: str, auth: str | None) -> None:
    """The API at `api` refuses a request without credentials and, given `auth`, accepts ours."""
    without = _status(api, "/flows/filter", None)
    if without != 401:
        raise ApiNotOurs(f"the Prefect API at {api} answers without authentication (HTTP {without}): anyone who "
                         "reaches it could approve upgrades or start runs", "start it with "
                         f"PREFECT_SERVER_API_AUTH_STRING and give clients PREFECT_API_AUTH_STRING, or set "
                         f"{ALLOW_UNAUTHENTICATED_ENV}=1 if the network in front of it is trusted")
    if auth is not None and (status := _status(api, "/flows/filter", auth)) != 200:
        raise ApiNotOurs(f"the Prefect API at {api} refuses our auth string (HTTP {status})",
                         "check PREFECT_API_AUTH_STRING (or the local server's auth string file), or whether "
                         "another program answers on that port")


def require_safe_api(api: str, auth: str | None, api_key: str | None) -> None:
    """Refuse an API that is neither on this machine nor authenticated, unless the operator opted out."""
    host = urllib.parse.urlsplit(api).hostname or ""
    loopback = host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    if loopback or os.environ.get(ALLOW_UNAUTHENTICATED_ENV) == "1":
        return
    if not auth and not api_key:
        raise ApiNotOurs(f"the Prefect API {api} is not on this machine and no credentials are set: the server "
                         "must require PREFECT_SERVER_API_AUTH_STRING",
                         f"set PREFECT_API_AUTH_STRING (or PREFECT_API_KEY), or {ALLOW_UNAUTHENTICATED_ENV}=1 "
                         "if the network in front of it is trusted")
    require_protected(api, auth)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ensure_local_server(home: Path, port: int = 4200, log: Callable[[str], None] = print) -> str:
    """Start `prefect server start` on 127.0.0.1 (SQLite in `home`, requiring the auth string of
    `local_auth_string(home)`) unless ours answers; return the API URL. Something else answering
    on the port - a server without our auth string, or any other program - is refused."""
    api = f"http://127.0.0.1:{port}/api"
    auth = local_auth_string(home)
    if api_healthy(api):
        try:
            require_protected(api, auth)
        except ApiNotOurs as exc:
            raise ApiNotOurs(f"something answers on 127.0.0.1:{port} but it is not this tool's server: {exc.message}",
                             f"stop it (a server this tool started earlier: `kill -- -$(cat {home / 'server.pid'})`); "
                             "the next command starts one that requires the auth string") from None
        return api
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth,
                        "DO_NOT_TRACK": "1", "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
                        "PREFECT_UI_API_URL": api}  # else the UI calls port 4200 whatever --port says
    prefect = shutil.which("prefect") or str(Path(sys.executable).parent / "prefect")
    log(f"starting a local Prefect server on 127.0.0.1:{port} (log: {home / 'server.log'})")
    with open(home / "server.log", "ab") as out:
        server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                   "--analytics-off"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, start_new_session=True)
    (home / "server.pid").write_text(str(server.pid))  # to stop it: kill its process group
    deadline = time.monotonic() + 90
    while not api_healthy(api):
        if time.monotonic() > deadline:
            raise UpgradeError("the local Prefect server did not start within 90 s", f"see {home / 'server.log'}")
        time.sleep(0.5)
    require_protected(api, auth)
    return api


def api_healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def approve(run_id: str, approve: bool, comment: str, approver: str, sign_with: Path | None = None) -> str:
    """Answer a paused run's approval form (what the UI's Resume button does); with `sign_with`,
    signed with that SSH key over the form's run id, gate and plan digest."""
    try:
        UUID(run_id)
    except ValueError:
        raise UpgradeError(f"{run_id!r} is not a flow run id", "copy the id from `mender-upgrade history` or the UI") from None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            raise UpgradeError(f"there is no flow run {run_id} on this Prefect server",
                               "copy the id from `mender-upgrade history` or the UI") from None
        if not run.state or run.state.type.value != "PAUSED":
            raise UpgradeError(f"run {run_id} is {run.state.name if run.state else 'unknown'}, not waiting for approval",
                               "only a paused run can be approved or rejected")
    form = _form_defaults(run_id, run.state.state_details.run_input_keyset or {})
    resume_flow_run(UUID(run_id), run_input=answer_for(form, approve, comment, approver, sign_with))
    with get_client(sync_client=True) as client:  # Prefect 3's resume_flow_run returns nothing: read the state
        after = client.read_flow_run(UUID(run_id)).state
    return after.name if after and after.name else "state unknown"


def _form_defaults(run_id: str, keys: dict) -> dict:
    """The binding the paused form was filled in with: run_id, gate, plan_digest."""
    schema = _flow_run_input(keys["schema"], run_id) if keys.get("schema") else None
    properties = (schema or {}).get("properties", {})
    return {name: properties.get(name, {}).get("default", "") for name in ("run_id", "gate", "plan_digest")}


def _flow_run_input(key: str, run_id: str) -> Any:
    """A paused run's input `key` (JSON), None when absent. Prefect's async_dispatch types
    read_flow_run_input as "value or coroutine"; called from sync code, as here, it is the value."""
    return cast(Any, read_flow_run_input(key, flow_run_id=UUID(run_id)))


def answer_for(form: dict, approve: bool, comment: str, approver: str, sign_with: Path | None = None) -> dict:
    """The run input answering `form`: its binding repeated, signed when `sign_with` names a key."""
    answer = form | {"approve": approve, "comment": comment, "approver": approver}
    if sign_with:
        answer["signature"] = sign(approval_payload(form["run_id"], form["gate"], form["plan_digest"], approve), sign_with)
    return answer


def terminal_approver(flow_run_id: Callable[[], str | None], ask: Callable[[str], tuple[bool, str]],
                      approver: str, stop: threading.Event) -> threading.Thread:
    """A thread that, whenever the run pauses, shows the description and resumes with the answer."""
    answered: set[str | None] = set()

    def answer_if_paused() -> None:
        run_id = flow_run_id()
        if not run_id:
            return
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
        keys = (run.state.state_details.run_input_keyset or {}) if run.state else {}
        if not run.state or run.state.type.value != "PAUSED" or keys.get("response") in answered:
            return
        try:
            description = _flow_run_input(keys["description"], run_id) or ""
        except Exception:  # paused before its form was saved (Prefect #11905): next poll
            return
        ok, comment = ask(str(description))
        resume_flow_run(UUID(run_id), run_input=answer_for(_form_defaults(run_id, keys), ok, comment, approver))
        answered.add(keys.get("response"))

    def loop() -> None:
        while not stop.is_set():
            try:
                answer_if_paused()
            except Exception as exc:  # the API hiccuped: keep watching
                print(f"approval watcher: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            stop.wait(1)

    # Prefect settings (the API URL) live in context variables, which threads do not inherit.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(loop,), daemon=True)
    thread.start()
    return thread


def history(limit: int = 50, host: str | None = None) -> list[dict]:
    """Upgrade runs that started or were due by now, newest first (future scheduled ones left out),
    each with what its report says (host, versions, outcome, reason, approvals, backup, downtime)."""
    now = datetime.now(timezone.utc)
    run_filter = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(before_=now),
                               name=FlowRunFilterName(like_=host) if host else None)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                                     flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                                     limit=limit)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]))) if runs else []
    summaries = {a.flow_run_id: parse_description(a.description or "") for a in artifacts
                 if (a.key or "").startswith(REPORT_KEY)}
    rows = [history_row(run, summaries.get(run.id), now) for run in runs]
    return [row for row in rows if host is None or row["host"] == host]


def history_row(run: FlowRun, summary: ReportSummary | None, now: datetime) -> dict:
    """One run for `history`: its report's summary, else what the run's name and state say (a
    run still going has no report yet)."""
    state = run.state.name if run.state and run.state.name is not None else "?"  # Prefect names every state
    named_host, _, versions = run.name.partition(" ")
    current, _, target = versions.partition("→")
    end = run.end_time or (now if run.start_time else None)
    return {
        "id": str(run.id), "name": run.name, "state": state,
        "host": summary.host if summary else named_host,
        "from": summary.current if summary else current or "?",
        "to": summary.target if summary else target or "?",
        "outcome": summary.outcome if summary else state.lower(),
        "reason": summary.reason if summary else (run.state.message or "" if run.state else ""),
        "approvals": list(summary.approvals) if summary else [],
        "backup_id": summary.backup_id if summary else "",
        "downtime_s": summary.downtime_s if summary else None,
        "start": run.start_time.isoformat() if run.start_time else None,
        "duration_s": round((end - run.start_time).total_seconds(), 1) if run.start_time and end else None,
    }


def report_markdown(run_id: str) -> str | None:
    """The run's report, as the UI shows it (None if the run ended before publishing one)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)])))
    return next((a.data for a in artifacts if (a.key or "").startswith(REPORT_KEY) and isinstance(a.data, str)), None)
