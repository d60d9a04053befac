"""The upgrade flow, in the order it runs:

1. while the server serves: plan the hops, staging proof, window check, preflight, what the
   cleanup would delete, review and dry run of every hop (merge, alias patch, `./run config`,
   images pulled), the plan's approval, the downtime approval, a hot pre-copy of the volumes;
2. one quiet period (writers stopped): backup (dump and volume deltas, verified), cleanup, then
   per hop merge and configuration update (alias patch, template carry-over), cycle, health
   gate, FCV;
3. on a staging host, the branch shared with the company remote; the report.

Owns approvals, the maintenance window, the host lock and the report; every step is a task
from `tasks/steps.py`. Nothing destructive happens before a verified backup exists; a failure
before the first cycle undoes what the run changed, a failure after it rolls back to the state
before the run. Every end but completion raises `RunEnded`, and `upgrade_mender` turns it into
the report's outcome in one place.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled

from mender_upgrade.deployments.notifications import emit_rolled_back
from mender_upgrade.flows.approvals import Binding, ask_approval
from mender_upgrade.flows.guardian import QuietGuard
from mender_upgrade.flows.host_guard import allowed_settings
from mender_upgrade.flows.lease import LeaseKeeper
from mender_upgrade.flows.lock import host_lock
from mender_upgrade.flows.report import RunReport, name_at_start, previous_unavailability, publish, rename_run
from mender_upgrade.tasks import steps
from mender_upgrade.tasks.backup import Manifest
from mender_upgrade.tasks.cleanup import Leftovers
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.host_policy import HostFileUnsafe, ParametersWiden
from mender_upgrade.tasks.precopy import PreCopy
from mender_upgrade.tasks.repository import HopReview, marker_ref
from mender_upgrade.tasks.run_record import Outcome
from mender_upgrade.tasks.settings import UpgradeSettings
from mender_upgrade.tasks.signatures import plan_digest
from mender_upgrade.tasks.staging import StagingNotDone, require_completed_on_staging
from mender_upgrade.tasks.versions import PlanRefused, UpgradePlan, Version, mongo_major
from mender_upgrade.tasks.window import WindowClosed, estimate_quiet_period_s, require_time_for_downtime, seconds_left


class UpgradeFailed(UpgradeError):
    """The upgrade failed after downtime began and the server was rolled back."""


class RunEnded(Exception):
    """How the run ends: the outcome and the reason its report shows. Raised for every end but
    completion. Without `error` the run ends Cancelled (a person, the window or an answer said
    no); with it, `error` is what the run fails (or is cancelled) with."""

    def __init__(self, outcome: Outcome, reason: str, error: BaseException | None = None) -> None:
        super().__init__(reason)
        self.outcome, self.reason, self.error = outcome, reason, error


@flow(name="upgrade-mender", persist_result=False, flow_run_name=name_at_start)
def upgrade_mender(settings: UpgradeSettings = UpgradeSettings(), poll_interval_s: int = 10):
    """Upgrade the Mender Server of `settings.integration_dir` to `settings.target_version`."""
    report = RunReport(host=settings.host(), run_id=str(flow_run.id or "local"))
    try:
        settings = _host_settings(settings, report)
        with host_lock(report.host, settings.lock_wait_s) as lease:
            end = RunEnded(Outcome.COMPLETED, _upgrade(settings, report, poll_interval_s, lease))
    except RunEnded as ended:
        end = ended
    except BaseException as exc:  # nobody judged it (a library error, a cancellation): it ends the run as it is
        cancelled = isinstance(exc, (TerminationSignal, KeyboardInterrupt))
        end = RunEnded(Outcome.CANCELLED if cancelled else Outcome.FAILED, _why(exc), exc)
    report.outcome, report.reason = end.outcome, end.reason  # the one place a run's outcome is set
    get_run_logger().info(f"outcome: {report.outcome} {report.reason}")
    publish(report)
    if end.error is not None:
        raise end.error
    return report.to_dict() if end.outcome is Outcome.COMPLETED else Cancelled(message=end.reason)


def _host_settings(settings: UpgradeSettings, report: RunReport) -> UpgradeSettings:
    """The host file's settings narrowed by this run's parameters; a refusal is the report's outcome."""
    try:
        effective, warnings = allowed_settings(settings)
    except (ParametersWiden, HostFileUnsafe) as exc:
        report.host = getattr(exc, "host_id", None) or report.host
        raise RunEnded(Outcome.REFUSED, _why(exc), exc) from exc
    report.host = effective.host()
    report.warnings += warnings
    return effective


def _upgrade(settings: UpgradeSettings, report: RunReport, poll: int, lease: LeaseKeeper) -> str:
    """The procedure, while the server serves: plan, staging proof, window, preflight, what the
    cleanup would delete, review and dry run of every hop (images pulled), the plan's approval;
    then the change in one quiet period. Returns why the run completed ("" when it upgraded);
    any other end raises RunEnded."""
    run_start = _run_start()
    plan = _plan(settings, report)
    if not plan.hops:
        return f"already at {plan.current}"
    _require_staging(settings, plan)
    _require_window(settings, run_start)
    with timed(report, "preflight"):
        steps.preflight_task(settings, plan)
    mongo_url = steps.mongo_url_task(settings)
    leftovers = _find_leftovers(settings, report, plan, mongo_url)
    reviews = _review_and_dry_run(settings, report, plan)
    if settings.approval.require_approval:
        _approve(report, "plan", approval_description(report, plan, reviews, leftovers.by_namespace(), settings),
                 settings, poll, run_start)
    return _change(settings, report, plan, mongo_url, leftovers.count, poll, run_start, lease)


def _plan(settings: UpgradeSettings, report: RunReport) -> UpgradePlan:
    """The hops from the running version to the target; a refused plan ends the run."""
    with timed(report, "plan"):
        plan = steps.plan_task(settings)
    report.current, report.target, report.hops = plan.current, plan.target or "", plan.hops
    rename_run(report)
    report.warnings += plan.warnings
    if plan.refused:
        raise RunEnded(Outcome.REFUSED, plan.refused, PlanRefused(
            f"upgrade refused: {plan.refused}", "choose an allowed target (see `mender-upgrade plan`)"))
    return plan


def _require_staging(settings: UpgradeSettings, plan: UpgradePlan) -> None:
    """With `staging.require_completed_on`: the target must have completed on that staging host."""
    if not settings.staging.require_completed_on:
        return
    try:
        proof = require_completed_on_staging(settings.staging.require_completed_on, cast(str, plan.target))  # not refused: set
    except StagingNotDone as exc:
        raise RunEnded(Outcome.REFUSED, _why(exc), exc) from exc
    get_run_logger().info(f"staging: {proof}")


def _require_window(settings: UpgradeSettings, run_start: datetime, quiet_s: float | None = None) -> None:
    """Enough of the maintenance window left for the downtime (or the estimated quiet period)."""
    try:
        require_time_for_downtime(settings.window, run_start, _now(), quiet_s)
    except WindowClosed as exc:
        raise RunEnded(Outcome.WINDOW_CLOSED, exc.message) from exc


def _find_leftovers(settings: UpgradeSettings, report: RunReport, plan: UpgradePlan, mongo_url: str) -> Leftovers:
    """What the deviceauth cleanup would delete (a dry run), and, before the storage-alias hop,
    a warning about devices whose client still needs the old storage address."""
    if plan.alias_patch:
        old = steps.old_clients_task(mongo_url, report.host, project=settings.compose_project)
        if old.old:
            report.warnings.append(f"{old.old} device(s) run a mender client older than 1.7.1")
    return steps.find_leftovers_task(mongo_url, report.host, project=settings.compose_project)


def _review_and_dry_run(settings: UpgradeSettings, report: RunReport, plan: UpgradePlan) -> list[HopReview]:
    """Every hop reviewed, merged, patched, checked and its images pulled in a throw-away
    worktree; a failure refuses the run with nothing changed. Sets the plan digest approvals bind to."""
    try:
        reviews = steps.review_task(settings, plan.current, plan.hops)
        with timed(report, "dry run"):
            steps.dry_run_task(settings, plan.hops, pull=True)
    except UpgradeError as exc:
        raise RunEnded(Outcome.REFUSED, "the review and dry run of the merge failed, nothing was changed: "
                       f"{_why(exc)}", exc) from exc
    # What an approval binds to: the answer for this run and this plan only.
    report.plan_digest = plan_digest(report.host, plan.current, cast(str, plan.target), plan.hops,  # not refused: set
                                     [r.diff for r in reviews])
    return reviews


def _change(settings: UpgradeSettings, report: RunReport, plan: UpgradePlan, mongo_url: str, leftover_count: int,
            poll: int, run_start: datetime, lease: LeaseKeeper) -> str:
    """The destructive part, in one quiet period. Before it, while the server serves: the
    downtime approval and a hot pre-copy of every volume. The quiet period runs from the first
    writer stop until the new version is healthy: dump and volume deltas (the backup), cleanup,
    merge and configuration update (alias patch, template carry-over), then the cycle and its
    health gate; the writers are not started in between, so nothing is written that a rollback
    would lose. Before the first cycle any failure or stop undoes what this run changed (merge,
    cleanup) and starts the writers again; after it, a failure rolls back with this run's
    verified backup."""
    undo = _Undo(settings, report, mongo_url)
    pre = _before_downtime(settings, report, plan, undo, poll, run_start)
    quiet = _QuietClock(report)
    current = plan.current
    report.downtime_s = 0.0
    guard = undo.guard = QuietGuard(settings, report, plan.current, lease)  # puts the server back if this process cannot
    try:
        quiet.start()
        undo.writers = steps.stop_writers_task(settings)
        undo.note()
        undo.backup = _backup(settings, report, pre, quiet)
        undo.note()
        if settings.cleanup_apply and leftover_count:
            _cleanup(settings, report, mongo_url, undo, quiet)
        for hop in plan.hops:
            _hop(settings, report, undo, quiet, current, hop, last=hop == plan.hops[-1])
            current = hop
    except BaseException as exc:  # after the first stop, anything (a library error, a cancellation) rolls back
        handed_over = guard.hand_over(exc)  # a cancellation: the runner kills this process 30 s later
        if handed_over:
            raise RunEnded(Outcome.CANCELLED, handed_over, exc) from exc
        raise _undo_or_roll_back(settings, report, plan, undo, quiet, exc) from exc
    finally:
        guard.release()
    _share(settings, report)
    return ""


def _before_downtime(settings: UpgradeSettings, report: RunReport, plan: UpgradePlan, undo: _Undo, poll: int,
                     run_start: datetime) -> PreCopy:
    """While the server serves: the downtime approval, the hot pre-copy, and a window check
    against the quiet period it lets us estimate. A failure or a stop undoes what this run changed."""
    target = plan.hops[-1]
    try:
        if settings.approval.approve_before_downtime:
            _approve(report, f"downtime-{target.replace('.', '-')}",
                     f"## Downtime for Mender {plan.current} → {target}\nImages are pulled; a hot copy of the volumes, "
                     f"then the writers stop for the quiet period (estimated "
                     f"{settings.window.estimated_downtime_s:.0f} s).", settings, poll, run_start, undo)
        with timed(report, "pre-copy"):
            pre = steps.precopy_task(settings, report.run_id)
        quiet_s = estimate_quiet_period_s(pre.previous_dump_bytes, pre.rate, previous_unavailability(report.host),
                                          settings.window.estimated_downtime_s)
        report.estimated_quiet_s = round(quiet_s, 1)
        _require_window(settings, run_start, quiet_s)
    except RunEnded:
        raise
    except BaseException as exc:  # a library error or a cancellation too: undo before leaving
        raise RunEnded(Outcome.FAILED, undo.run(_why(exc)), exc) from exc
    return pre


def _backup(settings: UpgradeSettings, report: RunReport, pre: PreCopy, quiet: _QuietClock) -> Manifest:
    """The writers stopped: dump and volume deltas on top of the pre-copy, verified."""
    backup = steps.finish_backup_task(settings, pre)
    manifest = backup.manifest
    quiet.parts.update(backup.seconds)
    report.backup = {"uri": f"{manifest.target}/{manifest.key}", "objects": len(manifest.objects),
                     "verified_utc": manifest.verified_utc, "sha256": {o.key: o.sha256 for o in manifest.objects},
                     "changed_since_pre_copy": backup.changed}
    return manifest


def _cleanup(settings: UpgradeSettings, report: RunReport, mongo_url: str, undo: _Undo, quiet: _QuietClock) -> None:
    """deviceauth's decommissioning leftovers deleted (saved first, verified after)."""
    undo.cleanup = True  # set first: a cleanup cut short is undone too
    undo.note()
    with timed(report, "cleanup"), quiet.part("cleanup"):
        report.cleanup = steps.cleanup_task(mongo_url, report.host, settings.backup, report.run_id,
                                            project=settings.compose_project).rows()


def _hop(settings: UpgradeSettings, report: RunReport, undo: _Undo, quiet: _QuietClock, current: str,
         hop: str, last: bool) -> None:
    """One hop: merge its release tag and update the configuration (alias patch, template
    carry-over), check a MongoDB major change, cycle the containers through the health gate,
    then finish the MongoDB change (FCV)."""
    undo.hop = hop
    with timed(report, f"merge {hop}"), quiet.part("merge"):
        result = steps.hop_task(settings, current, hop)
    undo.first_marker = undo.first_marker or result.merge.pre_upgrade_marker
    undo.hop_marker = result.merge.pre_upgrade_marker
    undo.note()
    report.warnings += result.warnings
    old_mongo, new_mongo = mongo_major(Version.parse(current)), mongo_major(Version.parse(hop))
    if old_mongo != new_mongo:
        steps.mongo_hop_check_task(settings, old_mongo, new_mongo)
    undo.cycled = True
    undo.note()
    with timed(report, f"cycle {hop}"):
        cycle = steps.cycle_task(settings, closed=not last)  # before the last hop the gateway stays closed: one quiet period
    quiet.cycled(cycle)
    report.downtime_s = (report.downtime_s or 0.0) + cycle.downtime_s
    report.kept[hop] = cycle.kept
    if old_mongo != new_mongo:
        steps.mongo_hop_finish_task(settings, new_mongo)
    undo.hop_marker = None  # deployed: only a rollback can take it back now


def _undo_or_roll_back(settings: UpgradeSettings, report: RunReport, plan: UpgradePlan, undo: _Undo,
                       quiet: _QuietClock, exc: BaseException) -> RunEnded:
    """How a failure in the quiet period ends the run: before the first cycle, undone (the old
    version keeps its data); after it, rolled back with this run's backup."""
    if not undo.cycled:
        return RunEnded(Outcome.FAILED, undo.run(_why(exc)), exc)
    log = get_run_logger()
    manifest = cast(Manifest, undo.backup)  # recorded before the first cycle
    first_marker = cast(str, undo.first_marker)  # the first hop's merge marked it
    log.error(f"upgrade failed: {_message(exc)}; rolling back to {marker_ref(first_marker)} with backup {manifest.backup_id}")
    with timed(report, "rollback"), quiet.part("rollback"), _stop_requests_held(log):
        steps.rollback_task(settings, manifest, first_marker)
    quiet.ended()  # the old version is healthy again
    reason = f"{_message(exc)}; the server is back on {plan.current} with backup {manifest.backup_id}"
    emit_rolled_back(report.run_id, reason)
    if isinstance(exc, (TerminationSignal, KeyboardInterrupt)):
        return RunEnded(Outcome.ROLLED_BACK, reason, exc)  # ends cancelled, as asked, rolled back
    failed = UpgradeFailed(f"upgrade to {undo.hop} failed and was rolled back: {_message(exc)}",
                           f"the server runs {plan.current} with its data; failed attempt kept under "
                           "refs/mender-upgrade/failed-upgrade/ for diagnosis")
    failed.__cause__ = exc
    return RunEnded(Outcome.ROLLED_BACK, reason, failed)


def _share(settings: UpgradeSettings, report: RunReport) -> None:
    """On a staging host: the upgraded branch to the company remote. The upgrade succeeded; a
    failed push is a warning, not a failed run."""
    if not settings.staging.push_remote:
        return
    try:
        steps.push_task(settings, settings.staging.push_remote)
    except UpgradeError as exc:
        report.warnings.append(f"not pushed to {settings.staging.push_remote}: {_why(exc)}")


def approval_description(report: RunReport, plan, reviews: list[HopReview], leftovers: dict[str, int],
                         settings: UpgradeSettings) -> str:
    lines = [f"## Upgrade Mender {plan.current} → {plan.target} on `{report.host}`",
             f"Hops: **{' → '.join(plan.hops)}**; estimated downtime per hop "
             f"{settings.window.estimated_downtime_s:.0f} s; backup to `{settings.backup.target}` first.", ""]
    lines += [f"- ⚠ {w}" for w in report.warnings]
    found = ", ".join(f"{namespace} {n}" for namespace, n in leftovers.items() if n)
    lines.append(f"- deviceauth leftovers to clean (dry run): {found or 'none'}")
    for review in reviews:
        lines += ["", review.to_markdown()]
    lines += ["", "Approve to start; reject (with a comment) to end the run with nothing changed.",
              f"Run `{report.run_id}`, plan digest `{report.plan_digest}` (the answer is bound to both; to sign it: "
              f"`mender-upgrade approve {report.run_id} --sign-with ~/.ssh/id_ed25519`)."]
    return "\n".join(lines)


def _approve(report: RunReport, gate: str, description: str, settings: UpgradeSettings, poll: int, run_start,
             undo: _Undo | None = None) -> None:
    """Ask at `gate`; a no (rejected, timed out, refused) ends the run, after `undo` if given."""
    left = seconds_left(settings.window, run_start, _now())
    timeout = min(settings.approval.timeout_minutes * 60, left)  # never past the window's end
    binding = Binding(report.run_id, report.plan_digest, settings.approval.require_signed,
                      settings.approval.allowed_signers)
    decision = ask_approval(gate, description, timeout, poll, binding)
    report.approvals.append(decision)
    if not decision.approved:
        reason = f"approval `{gate}` {decision.outcome}" + (f": {decision.comment}" if decision.comment else "")
        raise RunEnded(Outcome(decision.outcome), undo.run(reason) if undo else reason)


class _QuietClock:
    """Unavailability: from the first writer stop until the last cycle's services are healthy,
    with its parts (dump, delta, cleanup, merge, cycle, gate; `other` is the rest)."""

    def __init__(self, report: RunReport) -> None:
        self.report = report
        self.parts: dict[str, float] = {}
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
    """What this run changed, and how to take it back: before the first cycle by undoing
    (`run`), after it with the backup it recorded (a rollback)."""

    def __init__(self, settings: UpgradeSettings, report: RunReport, mongo_url: str) -> None:
        self.settings, self.report, self.mongo_url = settings, report, mongo_url
        self.cleanup = False
        self.first_marker: str | None = None  # the run's first pre-upgrade marker (state before the run)
        self.hop_marker: str | None = None    # the current hop's marker while its merge is not deployed
        self.writers: list[str] = []       # stopped for the quiet period: started again by the undo
        self.backup: Manifest | None = None  # this run's verified backup: what a rollback restores
        self.hop = ""                      # the hop under way
        self.cycled = False                # a cycle began: from now on a failure rolls back
        self.guard: QuietGuard | None = None  # told each change: it puts the server back if this process cannot

    def note(self) -> None:
        """Tell the quiet period's guardian what this run has changed so far."""
        if self.guard is not None:
            self.guard.note(self)

    def run(self, why: str) -> str:
        """Branch back to the first pre-upgrade tag, every service running, cleanup undone.
        Each part is tried even if an earlier one failed. Returns the report's reason: `why`,
        what was undone and what failed."""
        done, failed = [], []
        if self.first_marker:
            try:
                steps.reset_branch_task(self.settings, self.first_marker)
                done.append(f"branch reset to {marker_ref(self.first_marker)}")
            except Exception as exc:  # keep going: the services matter more than the branch
                failed.append(f"branch reset to {marker_ref(self.first_marker)}: {exc}")
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
                restored = steps.undo_cleanup_task(steps.mongo_url_task(self.settings), self.report.host,
                                                   self.settings.backup, self.report.run_id,
                                                   project=self.settings.compose_project)
                done.append(f"deviceauth cleanup undone ({sum(restored.restored.values())} documents back)"
                            if restored else "cleanup had deleted nothing")
        except Exception as exc:  # never hide the failure being undone behind the undo's own
            failed.append(exc.message if isinstance(exc, UpgradeError) else f"{exc.__class__.__name__}: {exc}")
        return (f"{why}; before any downtime, so the old version keeps running: "
                              f"{'; '.join(done) or 'nothing to undo'}"
                              + (f". NOT undone: {'; '.join(failed)}" if failed else ""))


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
