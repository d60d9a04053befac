"""`mender-upgrade backup | restore | drill`: the backup steps on their own, with progress."""

from __future__ import annotations

from pathlib import Path

import docker
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from mender_upgrade.flows.cli.common import CONFIG, ENDPOINT, INTEGRATION, TARGET, console, dim, settings_from
from mender_upgrade.flows.cli.errors import EXIT_FAILED
from mender_upgrade.tasks.backup import MANIFEST, ensure_verified_backup, newest_verified_backup, read_manifest
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.mongo import mongo_container
from mender_upgrade.tasks.restore import restore_backup, restore_drill
from mender_upgrade.tasks.settings import BackupSettings, load_settings


def open_manifest_uri(uri: str, base: BackupSettings, allow_unsigned: bool):
    """`<target>/<host id>/<backup id>/manifest.json` -> (that host's store, its checked manifest)."""
    head, _, name = uri.rstrip("/").rpartition("/")
    host_part, _, backup_id = head.rpartition("/")
    target, _, host_id = host_part.rpartition("/")
    if name != MANIFEST or not backup_id or not host_id or not target:
        raise UpgradeError(f"{uri!r} is not a backup manifest URI",
                           "use <target>/<host id>/<backup id>/manifest.json, as printed by `mender-upgrade backup`")
    store = load_settings({"backup": base.model_dump() | {"target": target}}).backup.open_store(host_id)
    return store, read_manifest(store, f"{backup_id}/{MANIFEST}", allow_unsigned)


ALLOW_UNSIGNED = typer.Option(False, "--allow-unsigned",
                              help="accept a manifest without a valid signature (after checking it yourself)")
OTHER_HOST = typer.Option(False, "--other-host", help="accept a backup made on another host")


class _Bytes:
    """A rich progress bar fed by the byte callbacks of the steps."""

    def __init__(self, progress: Progress, title: str) -> None:
        self.progress, self.task = progress, progress.add_task(title, total=None)

    def __call__(self, n: int) -> None:
        self.progress.advance(self.task, n)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=False)


def backup(config: Path = CONFIG, integration: Path = INTEGRATION, target: str = TARGET, endpoint: str = ENDPOINT) -> None:
    """Back up MongoDB and the volumes, verify by reading back, prune old backups."""
    s = settings_from(config, integration, target, endpoint)
    with _progress() as progress:
        m = ensure_verified_backup(docker.from_env(timeout=600), s.integration_dir, s.backup_store(),
                                   mode=s.backup.mode.value, keep_last=s.backup.keep_last,
                                   writers=s.writer_services, project=s.compose_project, log=dim,
                                   progress=_Bytes(progress, "backup and verify"))
    console.print(f"verified backup: {m.target}/{m.key}", markup=False, soft_wrap=True)  # one line: a URI to copy whole


def restore(manifest: str = typer.Option(..., "--manifest", help="URI of the backup's manifest.json"),
            config: Path = CONFIG, integration: Path = INTEGRATION, endpoint: str = ENDPOINT,
            yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
            allow_unsigned: bool = ALLOW_UNSIGNED, other_host: bool = OTHER_HOST) -> None:
    """Put production back to a verified backup (services stopped meanwhile)."""
    s = settings_from(config, integration, None, endpoint)
    store, m = open_manifest_uri(manifest, s.backup, allow_unsigned)
    if not yes:
        typer.confirm(f"Replace the database and volumes of {s.integration_dir} with backup {m.backup_id} "
                      f"of host {m.host_id} ({m.created_utc}, Mender {m.integration_version})?", abort=True)
    with _progress() as progress:
        restore_backup(docker.from_env(timeout=600), s.integration_dir, store, m, host_id=s.host(),
                       allow_other_host=other_host, project=s.compose_project,
                       health_timeout=s.health_timeout_s, log=dim, progress=_Bytes(progress, "restore"))
    console.print(f"restored {m.backup_id}; per-collection counts match the manifest")


def drill(manifest: str = typer.Option(None, "--manifest", help="manifest URI; default: newest verified"),
          config: Path = CONFIG, target: str = TARGET, endpoint: str = ENDPOINT,
          allow_unsigned: bool = ALLOW_UNSIGNED, other_host: bool = OTHER_HOST) -> None:
    """Restore a backup into throw-away containers and compare; production is not touched."""
    s = settings_from(config, None, target, endpoint)
    if manifest:
        store, m = open_manifest_uri(manifest, s.backup, allow_unsigned)
    else:
        store = s.backup_store()
        m = newest_verified_backup(store)
    client = docker.from_env(timeout=600)
    image = mongo_container(client, s.compose_project).attrs["Config"]["Image"]
    report = restore_drill(client, store, m, image, host_id=s.host(), allow_other_host=other_host, log=dim)
    console.print(f"drill of {m.backup_id}: {report.collections_checked} collections, {report.files_checked} files: "
                  + ("[green]passed[/green]" if report.passed else "[red]FAILED[/red]"))
    for difference in report.differences[:20]:
        console.print(f"  {difference}", markup=False)
    if not report.passed:
        raise typer.Exit(EXIT_FAILED)

