"""`mender-upgrade run | approve | history | serve | notifications | demo | config-schema`."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from mender_upgrade.flows.cli.common import console, dim, prefect_api, read_config
from mender_upgrade.flows.cli.errors import Stopped
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.settings import UpgradeSettings, load_settings

# Same name as mender_upgrade.deployments.notifications.WEBHOOK_URL_ENV (not imported: it would load prefect for --help).
WEBHOOK_URL_ENV = "MENDER_UPGRADE_WEBHOOK_URL"
WEBHOOK_HELP = ("POST here when an upgrade run pauses for approval, fails or is rolled back "
                "(may hold a token: prefer the environment variable)")
CONFIG = typer.Option(..., "--config", help="TOML or YAML settings file (see config-schema)")


def _ask_at_terminal(description: str) -> tuple[bool, str]:
    console.print(Markdown(description))
    answer = typer.confirm("Approve?", default=False)
    comment = typer.prompt("Comment", default="", show_default=False)
    return answer, comment


def run_upgrade(settings: UpgradeSettings, auto_approve: bool = False, poll_interval_s: int = 2):
    """Run the flow here; approvals at this terminal when it has one (or auto-approved).
    Returns (final state, flow run id)."""
    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from mender_upgrade.flows.runner import terminal_approver
    from mender_upgrade.flows.upgrade import upgrade_mender

    marker = f"cli-{uuid.uuid4().hex[:8]}"

    def my_run() -> str | None:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[marker])), limit=1)
        return str(runs[0].id) if runs else None

    stop = threading.Event()
    if auto_approve or sys.stdin.isatty():
        ask = (lambda d: (True, "auto-approved (--yes)")) if auto_approve else _ask_at_terminal
        terminal_approver(my_run, ask, os.environ.get("USER", "operator"), stop)
    else:
        console.print("approvals: answer in the Prefect UI or with `mender-upgrade approve RUN_ID`")
    try:
        with tags(marker):
            state = upgrade_mender(settings=settings, poll_interval_s=poll_interval_s, return_state=True)
    finally:
        stop.set()
    return state, my_run()


def finish(state, run_id: str | None) -> None:
    """Print the run's report (what `run` and `demo` show alike); raise what ended it unless it completed."""
    from mender_upgrade.flows.runner import report_markdown
    markdown = report_markdown(run_id) if run_id else None
    if markdown:
        console.print(Markdown(markdown))
    if state.is_completed():
        return
    if state.is_cancelled():  # an approval rejected or timed out, or the window closed
        raise Stopped(state.message or "the run was cancelled")
    ended = state.result(raise_on_failure=False)
    if isinstance(ended, BaseException):
        raise ended
    raise UpgradeError(f"the run ended {state.name}: {state.message}", f"see run {run_id} in the Prefect UI")


def run(config: Path = CONFIG,
        to: str = typer.Option(None, "--to", help="target release X.Y.Z (default: the config's target_version)"),
        yes: bool = typer.Option(False, "--yes", help="approve every gate automatically")) -> None:
    """Run the whole upgrade now, with approvals at this terminal or in the Prefect UI."""
    settings = read_config(config)
    if to:
        # Only what the file set, plus the target: unset fields take the host file's values.
        settings = load_settings(settings.model_dump(exclude_unset=True) | {"target_version": to})
    with prefect_api():
        finish(*run_upgrade(settings, auto_approve=yes))


def approve(run_id: str = typer.Argument(..., help="the paused run's id (see `mender-upgrade history`)"),
            reject: bool = typer.Option(False, "--reject", help="answer no: the run ends with nothing changed"),
            comment: str = typer.Option("", "--comment", help="why; stored with the run's report"),
            approver: str = typer.Option(os.environ.get("USER", "operator"), "--approver",
                                         help="who answers (default: $USER)"),
            sign_with: Path = typer.Option(None, "--sign-with", help="SSH private key (or .pub with ssh-agent) "
                                           "signing the answer; the host checks it against its allowed_signers")) -> None:
    """Approve (or --reject) a run waiting at an approval gate."""
    from mender_upgrade.flows.runner import approve as answer
    with prefect_api():
        state = answer(run_id, not reject, comment, approver, sign_with)
    console.print(f"{'rejected' if reject else 'approved'} run {run_id}: {state}", markup=False)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def print_history(rows: list[dict]) -> None:
    """A table; the run ids stay whole (piped output is as wide as it needs to be)."""
    out = console if sys.stdout.isatty() else Console(width=max(200, console.width))
    table = Table(title="mender-upgrade runs")
    for col in ("start", "host", "from → to", "outcome", "reason", "approvers", "backup", "downtime", "duration"):
        table.add_column(col, overflow="fold", max_width=60 if col == "reason" else None)
    table.add_column("run id", no_wrap=True, min_width=36)
    for r in rows:
        approvers = ", ".join(f"{a.get('approver') or '-'} ({a.get('gate')}: {a.get('outcome')})" for a in r["approvals"])
        table.add_row(*(escape(str(v)) for v in (
            (r["start"] or "-")[:19], r["host"], f"{r['from']} → {r['to']}", r["outcome"], r["reason"] or "-",
            approvers or "-", r["backup_id"] or "-", _seconds(r["downtime_s"]), _seconds(r["duration_s"]), r["id"])))
    out.print(table)


def history(as_json: bool = typer.Option(False, "--json", help="print JSON (every field, full ids)"),
            host: str = typer.Option(None, "--host", help="only this host id's runs"),
            limit: int = typer.Option(50, "--limit", min=1, max=200, help="newest runs to show")) -> None:
    """Past and running upgrade runs, newest first: host, from → to, outcome and why, approvers,
    backup, downtime, duration and the run id (for `approve`)."""
    from mender_upgrade.flows.runner import history as read_history
    with prefect_api():
        rows = read_history(limit, host)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print_history(rows)


def config_schema() -> None:
    """Every setting with its type, default and description (JSON Schema)."""
    print(json.dumps(UpgradeSettings.model_json_schema(), indent=2))


def check_schedule(cron: str, timezone: str) -> None:
    """Usage errors naming the option, before anything is registered."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {timezone!r}; use an IANA name like UTC or Europe/Berlin",
                                 param_hint="--timezone") from None
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError:
        raise typer.BadParameter(f"{cron!r} is not a cron schedule; use five fields: minute hour day month weekday, "
                                 "e.g. '0 1 * * 6'", param_hint="--cron") from None


def serve(config: Path = CONFIG,
          cron: str = typer.Option("0 1 * * 6", "--cron", help="maintenance-window schedule (cron, five fields)"),
          timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of --cron, e.g. Europe/Berlin"),
          webhook_url: str = typer.Option(None, "--webhook-url", envvar=WEBHOOK_URL_ENV, show_default=False,
                                          help=WEBHOOK_HELP)) -> None:
    """Serve this host's deployments (maintenance window, manual, weekly restore drill) on the
    Prefect server `run` uses. SIGTERM stops it without cancelling runs paused for approval (it
    waits for them; a second SIGTERM cancels them)."""
    check_schedule(cron, timezone)
    if webhook_url:
        from mender_upgrade.deployments.notifications import check_webhook_url, redacted
        try:
            check_webhook_url(webhook_url)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--webhook-url") from None
        console.print(f"notifications: paused/failed/rolled-back runs call {redacted(webhook_url)}", markup=False)
    settings = read_config(config)
    from mender_upgrade.deployments.definitions import serve_all
    with prefect_api():  # the server `run`, `history` and the UI use, never a temporary one
        serve_all(settings, cron, timezone, webhook_url)


def notifications(webhook_url: str = typer.Option(..., "--webhook-url", envvar=WEBHOOK_URL_ENV,
                                                  show_default=False, help=WEBHOOK_HELP)) -> None:
    """Create or update the webhook automation only (for prefect.yaml workers, which do not run `serve`)."""
    from mender_upgrade.deployments.notifications import apply_notifications, check_webhook_url, redacted
    try:
        check_webhook_url(webhook_url)
    except ValueError as exc:  # holds no secret part of the URL
        raise typer.BadParameter(str(exc), param_hint="--webhook-url") from None
    with prefect_api():
        automation_id = apply_notifications(webhook_url)
    console.print(f"automation {automation_id}: paused/failed/rolled-back runs call {redacted(webhook_url)}",
                  markup=False)


def demo_settings(sandbox, target: str) -> UpgradeSettings:
    """The embedded default: upgrade the sandbox's clone, back up to the sandbox's S3."""
    return load_settings({
        "integration_dir": str(sandbox.integration), "target_version": target, "host_id": "sandbox",
        "backup": {"target": f"s3://{sandbox.s3.bucket}/demo", "endpoint_url": sandbox.s3.url,
                   "access_key_id": sandbox.s3.access_key, "secret_access_key": sandbox.s3.secret_key},
        "stability_window_s": 5, "window": {"estimated_downtime_s": 60, "restore_margin_minutes": 2},
        # The fixture's placeholder certificates give its gateway stand-in no TLS (no 443): the
        # smoke runs on the real repository's stack only.
        "gateway_smoke": sandbox.real_upstream})


def demo(version: str = typer.Option("2.6.4", "--version", help="old release the sandbox starts with"),
         to: str = typer.Option("2.7.2", "--to", help="release to upgrade to"),
         yes: bool = typer.Option(False, "--yes", help="approve automatically (no terminal needed)"),
         artifacts_gib: float = typer.Option(0, "--artifacts-gib", min=0, max=64,
                                             help="seed this many GiB of incompressible artifacts first")) -> None:
    """The embedded default: sandbox at an old release, a real upgrade with approval, the report."""
    from mender_upgrade.sandbox import stack
    from mender_upgrade.sandbox.home import require_checkout
    require_checkout()  # before a Prefect server is started for nothing
    with prefect_api() as ui:
        sb = stack.up(version, log=dim, artifacts_gib=artifacts_gib)
        console.print(f"Prefect UI: {ui}; upgrading {version} -> {to}", markup=False)
        state, run_id = run_upgrade(demo_settings(sb, to), auto_approve=yes)
        try:
            finish(state, run_id)
        finally:
            console.print(stack.status())
