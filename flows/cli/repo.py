"""`mender-upgrade plan` and `mender-upgrade repo-update`: the repository part of an upgrade.

Exit codes: 0 allowed/done, 3 refused by the upgrade rules (or not confirmed), 1 any other error (named).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from mender_upgrade.flows.cli.common import CONFIG, INTEGRATION, console, settings_from
from mender_upgrade.flows.cli.errors import EXIT_DONE, EXIT_STOPPED, Stopped
from mender_upgrade.tasks import repository
from mender_upgrade.tasks.template_carry import TemplateChange
from mender_upgrade.tasks.versions import UpgradePlan

BRANCH = typer.Option(repository.PRODUCTION_BRANCH, "--branch", help="the production branch of the clone")


def _clone(config: Path | None, integration: Path | None):
    return repository.open_integration(settings_from(config, integration).integration_dir)


def _print_plan(plan: UpgradePlan) -> None:
    if plan.refused:
        console.print(f"[red]refused:[/red] {escape(plan.refused)}")
        return
    path = " -> ".join([plan.current, *plan.hops]) if plan.hops else plan.current
    console.print(f"[bold]Mender {plan.current}[/bold] ({'Enterprise' if plan.enterprise else 'Open Source'}) "
                  f"to [bold]{plan.target}[/bold]: {path}")
    if plan.alias_patch:
        console.print("  prod.yml gets the storage alias patch (storage-proxy -> gateway alias)")
    if plan.mongo_major_change:
        console.print(f"  MongoDB {plan.mongo_major_change[0]} -> {plan.mongo_major_change[1]}")
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/yellow] {escape(warning)}")


def plan(config: Path = CONFIG, integration: Path = INTEGRATION,
         to: str | None = typer.Option(None, "--to", help="target release X.Y.Z; default: the newest allowed"),
         as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
         branch: str = BRANCH) -> None:
    """Plan the upgrade hops from the clone's current release (fetches tags from origin)."""
    result = repository.plan_upgrade(_clone(config, integration), to, branch)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_plan(result)
    raise typer.Exit(EXIT_STOPPED if result.refused else EXIT_DONE)


def _changes_table(title: str, changes: dict[str, list[TemplateChange]]) -> Table | None:
    rows = [(config, c) for config, items in changes.items() for c in items]
    if not rows:
        return None
    table = Table(title=title, title_justify="left")
    for column in ("file", "key", "status", "note"):
        table.add_column(column, overflow="fold")
    for config, change in rows:
        colour = "green" if change.status in ("carried", "removed-service") else "yellow"
        table.add_row(config.rsplit("/", 1)[-1], change.key.removeprefix("services."),
                      f"[{colour}]{change.status}[/{colour}]", escape(change.note))
    return table


def _print_review(review: repository.HopReview, show_diff: bool, first: bool) -> None:
    console.rule(f"hop {review.from_version} -> {review.to_version}")
    console.print(f"{len(review.log)} upstream commit(s):")
    for line in review.log[:15]:
        console.print(f"  {escape(line)}")
    if len(review.log) > 15:
        console.print(f"  ... and {len(review.log) - 15} more")
    files = [line.split(" b/", 1)[-1] for line in review.diff.splitlines() if line.startswith("diff --git ")]
    console.print(f"compose/template/config files changed: {', '.join(files) or 'none'}")
    if show_diff and review.diff:
        console.print(escape(review.diff), highlight=False)
    if review.removed_services:
        console.print(f"services gone in {review.to_version}: {', '.join(review.removed_services)}")
    if not first:  # drift depends on the configuration the hops before this one produce
        console.print("template drift: listed when the hop runs (see --dry-run)")
        return
    table = _changes_table("template drift (prod.yml keys whose template changed)", review.drift)
    if table:
        console.print(table)


def _print_hop(result: repository.HopResult, dry: bool) -> None:
    merge = result.merge
    done = "would merge" if dry else "merged"
    line = f"[green]{done}[/green] {result.to_version} ({merge.commit[:10]})"
    if merge.merged_files:
        line += f", merged your edits in {', '.join(merge.merged_files)}"
    console.print(line)
    if merge.pre_upgrade_marker:
        # soft_wrap: a command to copy stays on one line
        console.print(f"  undo: git reset --hard {repository.marker_ref(merge.pre_upgrade_marker)}", soft_wrap=True)
    if result.config.storage_alias:
        console.print(f"  storage alias: {result.config.storage_alias} (now an alias of mender-api-gateway)")
    console.print(f"  configuration commits: {len(result.config.commits)}; ./run config -q passed")
    for change in result.config.drift:
        console.print(f"  [yellow]decide:[/yellow] {change.key} ({change.status}: {escape(change.note)})")
    for warning in result.warnings:
        console.print(f"  [yellow]warning:[/yellow] {escape(warning)}")


def repo_update(config: Path = CONFIG, integration: Path = INTEGRATION,
                to: str = typer.Option(..., "--to", help="target release X.Y.Z"),
                dry_run: bool = typer.Option(False, "--dry-run", help="merge in a temporary worktree only"),
                yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
                show_diff: bool = typer.Option(False, "--diff", help="print the whole diff between the tags"),
                branch: str = BRANCH) -> None:
    """Merge each hop's release tag into the production branch and carry the template changes
    into prod.yml, with a pre-upgrade marker ref (refs/mender-upgrade/pre-upgrade/...) per hop (no containers are touched)."""
    repo = _clone(config, integration)
    result = repository.plan_upgrade(repo, to, branch)
    _print_plan(result)
    if result.refused:
        raise typer.Exit(EXIT_STOPPED)
    if not result.hops:
        raise typer.Exit(EXIT_DONE)
    for index, (old, new) in enumerate(zip([result.current, *result.hops], result.hops, strict=False)):
        _print_review(repository.review_hop(repo, old, new), show_diff, first=index == 0)
    if dry_run:
        repository.dry_run(repo, result.hops, on_hop=lambda hop: _print_hop(hop, dry=True))
        console.print("dry run: every hop merges and passes ./run config -q; the clone was not changed")
        raise typer.Exit(EXIT_DONE)
    if not yes and not typer.confirm(f"Merge {' -> '.join(result.hops)} into branch {branch}?", default=False):
        raise Stopped("not confirmed: nothing was changed")
    repository.update_repository(repo, result.hops, on_hop=lambda hop: _print_hop(hop, dry=False))
    console.print(f"the repository is at {result.target}; the running containers are not (cycle them per hop)")
