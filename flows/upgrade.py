"""The upgrade flow: plan -> approval -> verified backup -> cleanup -> per hop (merge, patch,
config check, pull, [approval], cycle with health gate, FCV) -> report.

Owns approvals, the maintenance window, the host lock and the report; every step is a task
from `tasks/`. Nothing destructive happens before a verified backup exists; a failure after
the first container stop rolls back to the state before the run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.approvals import ask_approval
from flows.lock import host_lock
from flows.report import RunReport, publish
from tasks import steps
from tasks.cleanup import cleanup_task, find_leftovers_task, old_clients_task
from tasks.errors import UpgradeError
from tasks.rollback import reset_branch
from tasks.settings import UpgradeSettings
from tasks.versions import PlanRefused, Version, mongo_major
from tasks.window import WindowClosed, require_time_for_downtime, seconds_left


class UpgradeFailed(UpgradeError):
    """The upgrade failed after downtime began and the server was rolled back."""


@contextmanager
def timed(report: RunReport, step: str):
    start = time.monotonic()
    try:
        yield
    finally:
        report.steps[step] = round(report.steps.get(step, 0) + time.monotonic() - start, 1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _run_start() -> datetime:
    # A late scheduled run is judged against its window from the time it was scheduled for.
    scheduled = flow_run.scheduled_start_time
    return datetime.fromtimestamp(scheduled.timestamp(), timezone.utc) if scheduled else _now()


def approval_description(report: RunReport, plan, reviews: list[dict], leftovers: dict, settings: UpgradeSettings) -> str:
    lines = [f"## Upgrade Mender {plan.current} → {plan.target} on `{report.host}`",
             f"Hops: **{' → '.join(plan.hops)}**; estimated downtime per hop "
             f"{settings.window.estimated_downtime_s:.0f} s; backup to `{settings.backup.target}` first.", ""]
    lines += [f"- ⚠ {w}" for w in report.warnings]
    lines.append(f"- deviceauth leftovers to clean (dry run): {leftovers or 'none'}")
    for review in reviews:
        lines += ["", f"### {review['from']} → {review['to']}: {len(review['log'])} upstream commits",
                  f"Services removed upstream: {', '.join(review['removed_services']) or 'none'}"]
        for config, changes in review["drift"].items():
            if changes:
                lines.append(f"Template drift in `{config}`:")
                lines += [f"- `{c.get('path', c)}`: {c.get('status', '')}" for c in changes[:20]]
        diff = review["diff"]
        if diff:
            lines += ["<details><summary>diff of templates and compose files</summary>", "", "```diff",
                      diff[:6000] + ("\n… (truncated)" if len(diff) > 6000 else ""), "```", "</details>"]
    lines += ["", "Approve to start; reject (with a comment) to end the run with nothing changed."]
    return "\n".join(lines)


def _approve(report: RunReport, gate: str, description: str, settings: UpgradeSettings, poll: int, run_start) -> bool:
    left = seconds_left(settings.window, run_start, _now())
    timeout = min(settings.approval.timeout_minutes * 60, left)  # never past the window's end
    decision = ask_approval(gate, description, timeout, poll)
    report.approvals.append(decision)
    if not decision.approved:
        report.outcome = decision.outcome
        report.reason = f"approval `{gate}` {decision.outcome}" + (f": {decision.comment}" if decision.comment else "")
    return decision.approved


@flow(name="upgrade-mender", persist_result=False)
def upgrade_mender(settings: UpgradeSettings = UpgradeSettings(), poll_interval_s: int = 10):
    """Upgrade the Mender Server of `settings.integration_dir` to `settings.target_version`."""
    report = RunReport(host=settings.host(), run_id=str(flow_run.id or "local"))
    try:
        with host_lock(report.host, settings.lock_wait_s):
            return _upgrade(settings, report, poll_interval_s)
    except UpgradeError as exc:
        if report.outcome == "running":
            report.outcome, report.reason = "failed", exc.message
        raise
    finally:
        get_run_logger().info(f"outcome: {report.outcome} {report.reason}")
        publish(report)


def _upgrade(settings: UpgradeSettings, report: RunReport, poll: int):
    log = get_run_logger()
    run_start = _run_start()
    with timed(report, "plan"):
        plan = steps.plan_task(settings)
    report.current, report.target, report.hops = plan.current, plan.target or "", plan.hops
    report.warnings += plan.warnings
    if plan.refused:
        report.outcome, report.reason = "refused", plan.refused
        raise PlanRefused(f"upgrade refused: {plan.refused}", "choose an allowed target (see `mender-upgrade plan`)")
    if not plan.hops:
        report.outcome, report.reason = "completed", f"already at {plan.current}"
        return report.to_dict()
    try:
        require_time_for_downtime(settings.window, run_start, _now())
    except WindowClosed as exc:
        report.outcome, report.reason = "window closed", exc.message
        return Cancelled(message=exc.message)
    with timed(report, "preflight"):
        steps.preflight_task(settings, plan)
    mongo_url = steps.mongo_url_task(settings)
    if plan.alias_patch:
        old = old_clients_task(mongo_url)
        if old.old:
            report.warnings.append(f"{old.old} device(s) run a mender client older than 1.7.1")
    leftovers = find_leftovers_task(mongo_url)
    reviews = steps.review_task(settings, plan.current, plan.hops)
    if settings.approval.require_approval and not _approve(
            report, "plan", approval_description(report, plan, reviews, leftovers.by_namespace(), settings),
            settings, poll, run_start):
        return Cancelled(message=report.reason)

    with timed(report, "backup"):
        manifest = steps.backup_task(settings, report.run_id)
    report.backup = {"uri": f"{manifest.target}/{manifest.key}", "objects": len(manifest.objects),
                     "verified_utc": manifest.verified_utc, "sha256": {o.key: o.sha256 for o in manifest.objects}}
    if settings.cleanup_apply and leftovers.count:
        with timed(report, "cleanup"):
            cleaned = cleanup_task(mongo_url, settings.backup, report.run_id)
        report.cleanup = cleaned.rows()

    first_tag: str | None = None
    hop_tag: str | None = None  # the current hop's pre-upgrade tag (its merge not yet deployed)
    cycled = False
    current = plan.current
    report.downtime_s = 0.0
    try:
        for hop in plan.hops:
            with timed(report, f"merge {hop}"):
                result = steps.hop_task(settings, current, hop)
            hop_tag = result.merge.pre_upgrade_tag
            first_tag = first_tag or hop_tag
            report.warnings += result.warnings
            with timed(report, f"pull {hop}"):
                steps.pull_task(settings)
            old_mongo, new_mongo = mongo_major(Version.parse(current)), mongo_major(Version.parse(hop))
            if old_mongo != new_mongo:
                steps.mongo_hop_check_task(settings, old_mongo, new_mongo)
            if settings.approval.approve_before_downtime and not _approve(
                    report, f"downtime-{hop.replace('.', '-')}",
                    f"## Downtime for Mender {current} → {hop}\nImages are pulled; the containers stop next "
                    f"(estimated {settings.window.estimated_downtime_s:.0f} s).", settings, poll, run_start):
                break
            try:
                require_time_for_downtime(settings.window, run_start, _now())
            except WindowClosed as exc:
                report.outcome, report.reason = "window closed", exc.message
                break
            cycled = True
            with timed(report, f"cycle {hop}"):
                cycle = steps.cycle_task(settings)
            report.downtime_s += cycle.downtime_s
            if old_mongo != new_mongo:
                steps.mongo_hop_finish_task(settings, new_mongo)
            current = hop
    except UpgradeError as exc:
        if not cycled:
            if first_tag:
                reset_branch(settings.integration_dir, first_tag)
            raise
        log.error(f"upgrade failed: {exc}; rolling back to {first_tag} with backup {manifest.backup_id}")
        with timed(report, "rollback"):
            steps.rollback_task(settings, manifest, first_tag)
        report.outcome = "rolled back"
        report.reason = f"{exc.message}; the server is back on {plan.current} with backup {manifest.backup_id}"
        raise UpgradeFailed(f"upgrade to {hop} failed and was rolled back: {exc.message}",
                            f"the server runs {plan.current} with its data; failed attempt kept under "
                            "a failed-upgrade/ tag for diagnosis") from exc
    if current != plan.target:  # stopped at a gate before a hop's downtime: undo that hop's merge
        if hop_tag:
            reset_branch(settings.integration_dir, hop_tag)
        return Cancelled(message=report.reason)
    report.outcome = "completed"
    return report.to_dict()
