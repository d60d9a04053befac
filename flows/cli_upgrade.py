"""`mender-upgrade run | approve | history | serve | notifications | demo | config-schema`."""

from __future__ import annotations

import json
import os
import sys
import threading
import tomllib
import uuid
from contextlib import contextmanager
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from tasks.errors import UpgradeError
from tasks.settings import UpgradeSettings, load_settings

console = Console()
# Same name as deployments.notifications.WEBHOOK_URL_ENV (not imported: it would load prefect for --help).
WEBHOOK_URL_ENV = "MENDER_UPGRADE_WEBHOOK_URL"
WEBHOOK_HELP = ("POST here when an upgrade run pauses for approval, fails or is rolled back "
                "(may hold a token: prefer the environment variable)")
PREFECT_HOME = Path(os.environ.get("MENDER_UPGRADE_HOME", Path.home() / ".mender-upgrade")) / "prefect"


def read_config(path: Path) -> UpgradeSettings:
    """A TOML or YAML file holding one UpgradeSettings; errors name the field."""
    if not path.is_file():
        raise UpgradeError(f"config file {path} does not exist", "pass --config with a TOML or YAML file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UpgradeError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}",
                           "fix the syntax") from None
    if not isinstance(data, dict):
        raise UpgradeError(f"config file {path} must hold a mapping of settings", "see `mender-upgrade config-schema`")
    return load_settings(data)


def _ask_at_terminal(description: str) -> tuple[bool, str]:
    console.print(Markdown(description))
    answer = typer.confirm("Approve?", default=False)
    comment = typer.prompt("Comment", default="", show_default=False)
    return answer, comment


@contextmanager
def prefect_api():
    """The configured Prefect API, or a local server started for this machine (never an
    ephemeral one: approvals and history must outlive this process)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
    if PREFECT_API_URL.value():
        yield PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return
    from flows.runner import ensure_local_server
    api = ensure_local_server(PREFECT_HOME, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    ui = api.removesuffix("/api")
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_UI_URL: ui}):
        yield ui


def run_upgrade(settings: UpgradeSettings, auto_approve: bool = False, poll_interval_s: int = 2) -> dict | None:
    """Run the flow here; approvals at this terminal when it has one (or auto-approved)."""
    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.runner import terminal_approver
    from flows.upgrade import upgrade_mender

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
            return upgrade_mender(settings=settings, poll_interval_s=poll_interval_s)
    finally:
        stop.set()


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


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = typer.Option(..., "--config", help="TOML or YAML settings file"),
            to: str = typer.Option(None, "--to", help="target release X.Y.Z (default: from the config)"),
            yes: bool = typer.Option(False, "--yes", help="approve every gate automatically")) -> None:
        """Run the whole upgrade now, with approvals at this terminal or in the Prefect UI."""
        try:
            settings = read_config(config)
            if to:
                settings = load_settings(settings.model_dump() | {"target_version": to})
            with prefect_api():
                result = run_upgrade(settings, auto_approve=yes)
        except UpgradeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
        console.print(result)

    @app.command()
    def approve(run_id: str, reject: bool = typer.Option(False, "--reject"),
                comment: str = typer.Option("", "--comment"),
                approver: str = typer.Option(os.environ.get("USER", "operator"), "--approver")) -> None:
        """Approve (or --reject) a run waiting at an approval gate."""
        from flows.runner import approve as answer
        try:
            with prefect_api():
                state = answer(run_id, not reject, comment, approver)
        except UpgradeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
        console.print(f"{'rejected' if reject else 'approved'} run {run_id}: {state}")

    @app.command()
    def history(as_json: bool = typer.Option(False, "--json", help="print JSON (every field, full ids)"),
                host: str = typer.Option(None, "--host", help="only this host id's runs"),
                limit: int = typer.Option(50, "--limit", min=1, max=200, help="newest runs to show")) -> None:
        """Past and running upgrade runs, newest first: host, from → to, outcome and why, approvers,
        backup, downtime, duration and the run id (for `approve`)."""
        from flows.runner import history as read_history
        with prefect_api():
            rows = read_history(limit, host)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        print_history(rows)

    @app.command("config-schema")
    def config_schema() -> None:
        """Every setting with its type, default and description (JSON Schema)."""
        print(json.dumps(UpgradeSettings.model_json_schema(), indent=2))

    @app.command()
    def serve(config: Path = typer.Option(..., "--config"),
              cron: str = typer.Option("0 1 * * 6", help="maintenance-window schedule"),
              timezone: str = typer.Option("UTC"),
              webhook_url: str = typer.Option(None, "--webhook-url", envvar=WEBHOOK_URL_ENV, show_default=False,
                                              help=WEBHOOK_HELP)) -> None:
        """Serve the scheduled and the manual deployment in this process. SIGTERM stops it without
        cancelling runs paused for approval (it waits for them; a second SIGTERM cancels them)."""
        from deployments.definitions import serve_all
        from deployments.notifications import check_webhook_url, redacted
        if webhook_url:
            try:
                check_webhook_url(webhook_url)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--webhook-url") from None
            console.print(f"notifications: paused/failed/rolled-back runs call {redacted(webhook_url)}")
        settings = read_config(config)
        with prefect_api():  # the server `run`, `history` and the UI use, never a temporary one
            serve_all(settings, cron, timezone, webhook_url)

    @app.command()
    def notifications(webhook_url: str = typer.Option(..., "--webhook-url", envvar=WEBHOOK_URL_ENV,
                                                      show_default=False, help=WEBHOOK_HELP)) -> None:
        """Create or update the webhook automation only (for prefect.yaml workers, which do not run `serve`)."""
        import httpx

        from deployments.notifications import apply_notifications, redacted
        try:
            with prefect_api():
                automation_id = apply_notifications(webhook_url)
        except (UpgradeError, ValueError, httpx.HTTPError) as exc:  # none of them holds the webhook URL
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
        console.print(f"automation {automation_id}: paused/failed/rolled-back runs call {redacted(webhook_url)}")

    register_demo(app)


def demo_settings(sandbox, target: str) -> UpgradeSettings:
    """The embedded default: upgrade the sandbox's clone, back up to the sandbox's S3."""
    return load_settings({
        "integration_dir": str(sandbox.integration), "target_version": target, "host_id": "sandbox",
        "backup": {"target": f"s3://{sandbox.s3.bucket}/demo", "endpoint_url": sandbox.s3.url,
                   "access_key_id": sandbox.s3.access_key, "secret_access_key": sandbox.s3.secret_key},
        "stability_window_s": 5, "window": {"estimated_downtime_s": 60, "restore_margin_minutes": 2}})


def register_demo(app: typer.Typer) -> None:
    @app.command()
    def demo(version: str = typer.Option("2.6.4", help="old release the sandbox starts with"),
             to: str = typer.Option("2.7.2", help="release to upgrade to"),
             yes: bool = typer.Option(False, "--yes", help="approve automatically (no terminal needed)")) -> None:
        """The embedded default: sandbox at an old release, a real upgrade with approval, the report."""
        from sandbox import stack
        from sandbox.processes import SandboxError
        try:
            with prefect_api() as ui:
                sb = stack.up(version, log=lambda m: console.print(f"[dim]{m}[/dim]"))
                console.print(f"Prefect UI: {ui}; upgrading {version} -> {to}")
                result = run_upgrade(demo_settings(sb, to), auto_approve=yes)
        except (UpgradeError, SandboxError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
        from flows.report import RunReport
        from flows.approvals import Decision
        if isinstance(result, dict):
            result["approvals"] = [Decision(**d) for d in result.get("approvals", [])]
            console.print(Markdown(RunReport(**result).to_markdown()))
        else:
            console.print(result)
        console.print(stack.status())
