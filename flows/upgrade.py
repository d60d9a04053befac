"""The upgrade flow: plan -> review, dry run and pull of every hop -> approvals -> hot pre-copy
-> one quiet period (writers stopped: dump and volume deltas, cleanup, per hop merge, config
check, cycle with health gate, FCV) -> report.

Owns approvals, the maintenance window, the host lock and the report; every step is a task
from `tasks/`. Nothing destructive happens before a verified backup exists; a failure after
the first container stop rolls back to the state before the run.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled

from deployments.notifications import emit_rolled_back
from flows.approvals import Binding, ask_approval
from flows.host_guard import allowed_settings
from flows.lock import host_lock
from flows.report import RunReport, name_at_start, previous_unavailability, publish, rename_run
from tasks import steps
from tasks.cleanup import cleanup_task, find_leftovers_task, old_clients_task, undo_cleanup_task
from tasks.errors import UpgradeError
from tasks.host_policy import HostFileUnsafe, ParametersWiden
from tasks.repository import push_to_company_remote
from tasks.rollback import reset_branch
from tasks.settings import UpgradeSettings
from tasks.signatures import plan_digest
from tasks.staging import StagingNotDone, require_completed_on_staging
from tasks.versions import PlanRefused, Version, mongo_major
from tasks.window import WindowClosed, estimate_quiet_period_s, require_time_for_downtime, seconds_left


class UpgradeFailed(UpgradeError):
    """The upgrade failed after downtime began and the server was rolled back."""


@contextmanager
def timed(report: RunReport, step: str):
    start = time.monotonic()
    try:
        yield
    finally:
        report.steps[step] = round(report.steps.get(step, 0) + time.monotonic() - start, 1)


def _why(exc: BaseException) -> str:
    if not isinstance(exc, UpgradeError):
        return _message(exc)
    return f"{exc.message} (what to do: {exc.hint})" if exc.hint else exc.message


def _message(exc: BaseException) -> str:
    if isinstance(exc, UpgradeError):
        return exc.message
    if isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
        return "the run was cancelled (or its process told to stop)"
    return f"{exc.__class__.__name__}: {exc}"


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
                # Keys and what happens to them, never values: the operator's current value of a
                # renamed key may be a secret.
                lines += [f"- `{c['key']}`: {c['status']}" + (f" ({c['note']})" if c.get("note") else "")
                          for c in changes[:20]]
        diff = review["diff"]
        if diff:
            lines += ["<details><summary>diff of templates and compose files</summary>", "", "```diff",
                      diff[:6000] + ("\n… (truncated)" if len(diff) > 6000 else ""), "```", "</details>"]
    lines += ["", "Approve to start; reject (with a comment) to end the run with nothing changed.",
              f"Run `{report.run_id}`, plan digest `{report.plan_digest}` (the answer is bound to both; to sign it: "
              f"`mender-upgrade approve {report.run_id} --sign-with ~/.ssh/id_ed25519`)."]
    return "\n".join(lines)


def _approve(report: RunReport, gate: str, description: str, settings: UpgradeSettings, poll: int, run_start) -> bool:
    left = seconds_left(settings.window, run_start, _now())
    timeout = min(settings.approval.timeout_minutes * 60, left)  # never past the window's end
    binding = Binding(report.run_id, report.plan_digest, settings.approval.require_signed,
                      settings.approval.allowed_signers)
    decision = ask_approval(gate, description, timeout, poll, binding)
    report.approvals.append(decision)
    if not decision.approved:
        report.outcome = decision.outcome
        report.reason = f"approval `{gate}` {decision.outcome}" + (f": {decision.comment}" if decision.comment else "")
    return decision.approved


@flow(name="upgrade-mender", persist_result=False, flow_run_name=name_at_start)
def upgrade_mender(settings: UpgradeSettings = UpgradeSettings(), poll_interval_s: int = 10):
    """Upgrade the Mender Server of `settings.integration_dir` to `settings.target_version`."""
    report = RunReport(host=settings.host(), run_id=str(flow_run.id or "local"))
    try:
        settings = _host_settings(settings, report)
        with host_lock(report.host, settings.lock_wait_s):
            return _upgrade(settings, report, poll_interval_s)
    except BaseException as exc:  # whatever ends the run, the report says how it ended
        if report.outcome == "running":
            cancelled = isinstance(exc, (TerminationSignal, KeyboardInterrupt))
            report.outcome, report.reason = ("cancelled" if cancelled else "failed"), _why(exc)
        raise
    finally:
        get_run_logger().info(f"outcome: {report.outcome} {report.reason}")
        publish(report)


def _host_settings(settings: UpgradeSettings, report: RunReport) -> UpgradeSettings:
    """The host file's settings narrowed by this run's parameters; a refusal is the report's outcome."""
    try:
        effective, warnings = allowed_settings(settings)
    except (ParametersWiden, HostFileUnsafe) as exc:
        report.host = getattr(exc, "host_id", None) or report.host
        report.outcome, report.reason = "refused", _why(exc)
        raise
    report.host = effective.host()
    report.warnings += warnings
    return effective


def _upgrade(settings: UpgradeSettings, report: RunReport, poll: int):
    run_start = _run_start()
    with timed(report, "plan"):
        plan = steps.plan_task(settings)
    report.current, report.target, report.hops = plan.current, plan.target or "", plan.hops
    rename_run(report)
    report.warnings += plan.warnings
    if plan.refused:
        report.outcome, report.reason = "refused", plan.refused
        raise PlanRefused(f"upgrade refused: {plan.refused}", "choose an allowed target (see `mender-upgrade plan`)")
    if not plan.hops:
        report.outcome, report.reason = "completed", f"already at {plan.current}"
        return report.to_dict()
    if settings.staging.require_completed_on:
        try:
            proof = require_completed_on_staging(settings.staging.require_completed_on, plan.target)
        except StagingNotDone as exc:
            report.outcome, report.reason = "refused", _why(exc)
            raise
        get_run_logger().info(f"staging: {proof}")
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
    try:
        reviews = steps.review_task(settings, plan.current, plan.hops)
        with timed(report, "dry run"):
            steps.dry_run_task(settings, plan.hops, pull=True)
    except UpgradeError as exc:
        report.outcome, report.reason = "refused", f"the review and dry run of the merge failed, nothing was changed: {_why(exc)}"
        raise
    # What an approval binds to: the answer for this run and this plan only.
    report.plan_digest = plan_digest(report.host, plan.current, plan.target, plan.hops, [r["diff"] for r in reviews])
    if settings.approval.require_approval and not _approve(
            report, "plan", approval_description(report, plan, reviews, leftovers.by_namespace(), settings),
            settings, poll, run_start):
        return Cancelled(message=report.reason)
    return _change(settings, report, plan, mongo_url, leftovers.count, poll, run_start)


def _change(settings: UpgradeSettings, report: RunReport, plan, mongo_url: str, leftover_count: int,
            poll: int, run_start: datetime):
    """The destructive part, in one quiet period. Before it, while the server serves: the
    downtime approval and a hot pre-copy of every volume. The quiet period runs from the first
    writer stop until the new version is healthy: dump and volume deltas (the backup), cleanup,
    merge and configuration update, then the cycle; the writers are not started in between, so
    nothing is written that a rollback would lose. Before the first cycle any failure or stop
    undoes what this run changed (merge, cleanup) and starts the writers again; after it, a
    failure rolls back with this run's verified backup."""
    log = get_run_logger()
    undo = _Undo(settings, report, mongo_url)
    target = plan.hops[-1]
    try:
        if settings.approval.approve_before_downtime and not _approve(
                report, f"downtime-{target.replace('.', '-')}",
                f"## Downtime for Mender {plan.current} → {target}\nImages are pulled; a hot copy of the volumes, "
                f"then the writers stop for the quiet period (estimated "
                f"{settings.window.estimated_downtime_s:.0f} s).", settings, poll, run_start):
            undo.run(report.reason)
            return Cancelled(message=report.reason)
        with timed(report, "pre-copy"):
            pre = steps.precopy_task(settings, report.run_id)
        quiet_s = estimate_quiet_period_s(pre.previous_dump_bytes, pre.rate, previous_unavailability(report.host),
                                          settings.window.estimated_downtime_s)
        report.estimated_quiet_s = round(quiet_s, 1)
        require_time_for_downtime(settings.window, run_start, _now(), quiet_s)
    except WindowClosed as exc:
        report.outcome, report.reason = "window closed", exc.message
        return Cancelled(message=exc.message)
    except BaseException as exc:  # a library error or a cancellation too: undo before leaving
        undo.run(_why(exc))
        raise

    quiet = _QuietClock(report)
    cycled = False
    current = plan.current
    report.downtime_s = 0.0
    try:
        quiet.start()
        undo.writers = steps.stop_writers_task(settings)
        backup = steps.finish_backup_task(settings, pre)
        manifest = backup.manifest
        quiet.parts.update(backup.seconds)
        report.backup = {"uri": f"{manifest.target}/{manifest.key}", "objects": len(manifest.objects),
                         "verified_utc": manifest.verified_utc, "sha256": {o.key: o.sha256 for o in manifest.objects},
                         "changed_since_pre_copy": backup.changed}
        if settings.cleanup_apply and leftover_count:
            undo.cleanup = True  # set first: a cleanup cut short is undone too
            with timed(report, "cleanup"), quiet.part("cleanup"):
                report.cleanup = cleanup_task(mongo_url, settings.backup, report.run_id).rows()
        for hop in plan.hops:
            with timed(report, f"merge {hop}"), quiet.part("merge"):
                result = steps.hop_task(settings, current, hop)
            undo.first_tag = undo.first_tag or result.merge.pre_upgrade_tag
            undo.hop_tag = result.merge.pre_upgrade_tag
            report.warnings += result.warnings
            old_mongo, new_mongo = mongo_major(Version.parse(current)), mongo_major(Version.parse(hop))
            if old_mongo != new_mongo:
                steps.mongo_hop_check_task(settings, old_mongo, new_mongo)
            cycled = True
            with timed(report, f"cycle {hop}"):  # before the last hop the gateway stays closed: one quiet period
                cycle = steps.cycle_task(settings, closed=hop != plan.hops[-1])
            quiet.cycled(cycle)
            report.downtime_s += cycle.downtime_s
            report.kept[hop] = cycle.kept
            if old_mongo != new_mongo:
                steps.mongo_hop_finish_task(settings, new_mongo)
            current = hop
            undo.hop_tag = None  # deployed: only a rollback can take it back now
    except BaseException as exc:  # after the first stop, anything (a library error, a cancellation) rolls back
        if not cycled:
            undo.run(_why(exc))
            raise
        log.error(f"upgrade failed: {_message(exc)}; rolling back to {undo.first_tag} with backup {manifest.backup_id}")
        with timed(report, "rollback"), quiet.part("rollback"), _stop_requests_held(log):
            steps.rollback_task(settings, manifest, undo.first_tag)
        quiet.ended()  # the old version is healthy again
        report.outcome = "rolled back"
        report.reason = f"{_message(exc)}; the server is back on {plan.current} with backup {manifest.backup_id}"
        emit_rolled_back(report.run_id, report.reason)
        if isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
            raise  # the run ends cancelled, as asked, with the server rolled back
        raise UpgradeFailed(f"upgrade to {hop} failed and was rolled back: {_message(exc)}",
                            f"the server runs {plan.current} with its data; failed attempt kept under "
                            "refs/mender-upgrade/failed-upgrade/ for diagnosis") from exc
    report.outcome = "completed"
    if settings.staging.push_remote:
        try:
            pushed = push_to_company_remote(settings.integration_dir, settings.staging.push_remote)
            log.info(f"pushed to {settings.staging.push_remote}: {', '.join(pushed) or 'already up to date'}")
        except UpgradeError as exc:  # the upgrade succeeded; a failed push is a warning, not a failed run
            report.warnings.append(f"not pushed to {settings.staging.push_remote}: {_why(exc)}")
    return report.to_dict()


class _QuietClock:
    """Unavailability: from the first writer stop until the last cycle's services are healthy,
    with its parts (dump, delta, cleanup, merge, cycle, gate; `other` is the rest)."""

    def __init__(self, report: RunReport) -> None:
        self.report, self.parts = report, {}
        self._start = 0.0

    def start(self) -> None:
        self._start = time.monotonic()

    @contextmanager
    def part(self, name: str):
        t = time.monotonic()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.monotonic() - t

    def cycled(self, cycle) -> None:
        self.parts["cycle"] = self.parts.get("cycle", 0.0) + cycle.downtime_s - cycle.gate_s
        self.parts["gate"] = self.parts.get("gate", 0.0) + cycle.gate_s
        self.ended(cycle.healthy_at)

    def ended(self, healthy_at: float | None = None) -> None:
        """The server serves again at `healthy_at` (default now: a rollback has just waited for it)."""
        total = (time.monotonic() if healthy_at is None else healthy_at) - self._start
        self.report.unavailability_s = round(total, 1)
        self.report.unavailability = {k: round(v, 1) for k, v in self.parts.items()}
        self.report.unavailability["other"] = round(max(0.0, total - sum(self.parts.values())), 1)


@contextmanager
def _stop_requests_held(log):
    """While rolling back, a further SIGTERM (a second cancel) is logged and held: cutting the
    rollback short would leave the server half restored. SIGKILL cannot be held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def held(signum, frame) -> None:
        log.warning("stop requested during the rollback: held until the rollback has finished")
    previous = signal.signal(signal.SIGTERM, held)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Undo:
    """What this run changed before any downtime, and how to take it back."""

    def __init__(self, settings: UpgradeSettings, report: RunReport, mongo_url: str) -> None:
        self.settings, self.report, self.mongo_url = settings, report, mongo_url
        self.cleanup = False
        self.first_tag: str | None = None  # the run's first pre-upgrade tag (state before the run)
        self.hop_tag: str | None = None    # the current hop's tag while its merge is not deployed
        self.writers: list[str] = []       # stopped for the quiet period: started again by the undo

    def run(self, why: str) -> None:
        """Branch back to the first pre-upgrade tag, every service running, cleanup undone.
        Each part is tried even if an earlier one failed; what failed goes into the report."""
        done, failed = [], []
        if self.first_tag:
            try:
                reset_branch(self.settings.integration_dir, self.first_tag)
                done.append(f"branch reset to {self.first_tag}")
            except Exception as exc:  # keep going: the services matter more than the branch
                failed.append(f"branch reset to {self.first_tag}: {exc}")
        try:
            started = steps.ensure_running_task(self.settings)
            others = [s for s in started if s not in self.writers]
            if others:
                done.append(f"started {', '.join(others)}")
            elif not self.writers:
                done.append("every service still running")
            if self.writers:
                done.append(f"the writers stopped for the quiet period started again ({', '.join(self.writers)})")
            if self.cleanup:
                restored = undo_cleanup_task(steps.mongo_url_task(self.settings), self.settings.backup,
                                             self.report.run_id)
                done.append(f"deviceauth cleanup undone ({sum(restored.restored.values())} documents back)"
                            if restored else "cleanup had deleted nothing")
        except Exception as exc:  # never hide the failure being undone behind the undo's own
            failed.append(exc.message if isinstance(exc, UpgradeError) else f"{exc.__class__.__name__}: {exc}")
        if self.report.outcome == "running":
            self.report.outcome = "failed"
        self.report.reason = (f"{why}; before any downtime, so the old version keeps running: "
                              f"{'; '.join(done) or 'nothing to undo'}"
                              + (f". NOT undone: {'; '.join(failed)}" if failed else ""))
