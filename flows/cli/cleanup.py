"""`mender-upgrade cleanup`: deviceauth decommissioning leftovers (dry run, --apply, --restore).

Exit codes: 0 done (or nothing to do), 1 any error (named, with what to do), 3 not confirmed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from mender_upgrade.flows.cli.common import CONFIG, ENDPOINT, TARGET, console, dim, settings_from
from mender_upgrade.flows.cli.errors import Stopped
from mender_upgrade.tasks.settings import UpgradeSettings
from mender_upgrade.tasks.store import BackupStore, LocalStore

if TYPE_CHECKING:
    from mender_upgrade.tasks import cleanup


def _mongo_url(mongo_url: str | None, project: str) -> str:
    if mongo_url:
        return mongo_url
    import docker

    from mender_upgrade.tasks.mongo import MongoUnreachable, mongo_url as find_url
    try:
        return find_url(docker.from_env(), project)
    except docker.errors.DockerException as exc:
        raise MongoUnreachable(f"the Docker daemon does not answer ({exc.__class__.__name__})",
                               "start Docker or pass --mongo-url") from exc


def _leftovers_table(leftovers: cleanup.Leftovers) -> Table:
    table = Table(title=f"deviceauth decommissioning leftovers ({leftovers.layout.value})", title_justify="left")
    for column in ("database", "tenant", "devices", "auth_sets", "tokens", "sample"):
        table.add_column(column, overflow="fold", justify="right" if column in ("devices", "auth_sets", "tokens") else "left")
    for row in leftovers.rows():
        table.add_row(*(escape(str(row[c])) for c in ("database", "tenant", "devices", "auth_sets", "tokens", "sample")))
    return table


def _report_table(report: cleanup.CleanupReport) -> Table:
    table = Table(title="deviceauth cleanup (verified)", title_justify="left")
    columns = ("database", "collection", "before", "leftovers", "deleted", "after")
    for column in columns:
        table.add_column(column, overflow="fold", justify="left" if column in columns[:2] else "right")
    for row in report.rows():
        table.add_row(*(str(row[c]) for c in columns))
    return table


def _warn_old_clients(client) -> None:
    from mender_upgrade.tasks import cleanup
    result = cleanup.count_old_clients(client)
    if result.old:
        versions = ", ".join(f"{v}: {n}" for v, n in result.versions.items())
        console.print(f"[yellow]warning:[/yellow] {result.old} of {result.total} device(s) in inventory report a "
                      f"mender client older than {result.below} ({versions}); before the 2.6 -> 2.7 hop they "
                      "still need the old storage proxy address (keep it as the gateway alias)")


def _restore_source(path: str, settings: UpgradeSettings) -> tuple[BackupStore, str]:
    """A local file (its folder is the store) or a key in this host's namespace of the backup target."""
    local = Path(path)
    if local.is_file():
        return LocalStore(local.resolve().parent), local.name
    return settings.backup_store(), path


def cleanup_command(
        apply: bool = typer.Option(False, "--apply", help="save the leftovers to the backup target, delete them, verify"),
        restore: str | None = typer.Option(None, "--restore", metavar="FILE",
                                           help="put saved documents back: a leftovers.bson/manifest.json path, "
                                                "or its key in the backup target"),
        config: Path | None = CONFIG,
        mongo_url: str | None = typer.Option(None, "--mongo-url", envvar="MENDER_UPGRADE_MONGO_URL",
                                             help="default: mender-mongo of the compose project, found via Docker"),
        database: list[str] = typer.Option([], "--database", help="only this deviceauth database (repeatable)"),
        tenant: list[str] = typer.Option([], "--tenant", help="only this tenant id; '' is the default tenant (repeatable)"),
        target: str | None = TARGET,
        endpoint: str | None = ENDPOINT,
        run_id: str | None = typer.Option(None, "--run-id", help="names the saved folder cleanup/<run-id>/"),
        yes: bool = typer.Option(False, "--yes", help="do not ask before deleting"),
        project: str | None = typer.Option(None, "--project",
                                           help="compose project name (default: the config's compose_project)"),
) -> None:
    """Find deviceauth leftovers of failed device decommissioning (dry run by default)."""
    from mender_upgrade.tasks import cleanup  # imports Prefect (~3 s): only when this command runs
    if apply and restore:
        raise typer.BadParameter("--apply and --restore exclude each other: run one, then the other")
    settings = settings_from(config, None, target, endpoint)  # a wrong target is named before anything is read
    backup = settings.backup
    with cleanup.open_mongo(_mongo_url(mongo_url, project or settings.compose_project)) as client:
        if restore:
            store, key = _restore_source(restore, settings)
            restored = cleanup.restore_leftovers(client, store, key)
            for ns in sorted(restored.restored):
                console.print(f"{ns}: restored {restored.restored[ns]}, "
                              f"already present {restored.already_present.get(ns, 0)}", markup=False)
            console.print(f"restored {sum(restored.restored.values())} document(s) from {store.uri}/{key}",
                          markup=False)
            return
        leftovers = cleanup.find_decommissioned_leftovers(client, database, tenant)
        console.print(_leftovers_table(leftovers))
        if leftovers.ignored_databases:
            console.print(f"not used by deviceauth in this layout (left alone): "
                          f"{', '.join(leftovers.ignored_databases)}", markup=False)
        _warn_old_clients(client)
        if not apply:
            console.print(f"dry run: {leftovers.count} leftover document(s); nothing was changed "
                          "(--apply saves and deletes them)")
            return
        if not leftovers.count:
            console.print("nothing to delete")
            return
        if not yes and not typer.confirm(f"Save {leftovers.count} document(s) to {backup.target} and delete "
                                         "them from MongoDB?", default=False):
            raise Stopped("not confirmed: nothing was changed")
        report = cleanup.apply_cleanup(client, settings.backup_store(), run_id or uuid.uuid4().hex, database, tenant,
                                       log=dim)
    console.print(_report_table(report))
    if report.receipt:
        console.print(f"saved: {report.receipt.target}/{report.receipt.key} sha256 {report.receipt.sha256}",
                      markup=False, soft_wrap=True)  # one line: a URI and a command to copy whole
        where = f"--config {config} " if config else ""  # its host_id names the namespace the copy is in
        console.print(f"undo: mender-upgrade cleanup --restore {report.receipt.key} {where}--target {backup.target}",
                      markup=False, soft_wrap=True)
    console.print(f"verified: 0 leftovers remain, {sum(report.deleted.values())} document(s) deleted, "
                  "every other document kept")
