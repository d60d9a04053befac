"""Maintenance windows: when downtime may start (pure)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.settings import MaintenanceWindow


class WindowClosed(UpgradeError):
    """Not enough of the maintenance window is left for what comes next."""


def window_bounds(window: MaintenanceWindow, run_start: datetime) -> tuple[datetime, datetime]:
    """Aware start and end of the window; an empty start means the run's start."""
    zone = ZoneInfo(window.timezone)
    if not window.start:
        start = run_start.astimezone(zone)
    else:
        try:
            parsed = datetime.fromisoformat(window.start)
        except ValueError:
            parsed = datetime.combine(run_start.astimezone(zone).date(), time.fromisoformat(window.start))
        start = parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)
    return start, start + timedelta(minutes=window.duration_minutes)


def seconds_left(window: MaintenanceWindow, run_start: datetime, now: datetime) -> float:
    start, end = window_bounds(window, run_start)
    if now < start:
        return 0.0
    return max(0.0, (end - now).total_seconds())


def estimate_quiet_period_s(dump_bytes: int | None, rate_bytes_s: float, previous: list[dict[str, float]],
                            fallback_s: float) -> float:
    """The quiet period to expect: the dump (the size of this host's previous dump, at the
    pre-copy's measured archive rate; else the slowest previous dump) plus the rest (delta,
    cleanup, merge, cycle, gate) as long as the slowest of this host's previous runs measured
    it, or `fallback_s` (window.estimated_downtime_s) when there is no previous run."""
    if dump_bytes and rate_bytes_s > 0:
        dump = dump_bytes / rate_bytes_s
    else:
        dump = max((p.get("dump", 0.0) for p in previous), default=0.0)
    rest = max((sum(v for k, v in p.items() if k != "dump") for p in previous), default=fallback_s)
    return dump + rest


def require_time_for_downtime(window: MaintenanceWindow, run_start: datetime, now: datetime,
                              estimated_s: float | None = None) -> float:
    """Raise unless the window is open and holds the estimated downtime (`estimated_s`, else
    the configured estimate) plus the restore margin."""
    start, end = window_bounds(window, run_start)
    need = (window.estimated_downtime_s if estimated_s is None else estimated_s) + window.restore_margin_minutes * 60
    left = seconds_left(window, run_start, now)
    if left < need:
        state = "has not opened yet" if now < start else f"has {left / 60:.1f} min left"
        raise WindowClosed(f"the maintenance window {start:%Y-%m-%d %H:%M}–{end:%H:%M} {window.timezone} {state}; "
                           f"downtime needs {need / 60:.1f} min (estimated downtime + restore margin)",
                           "nothing destructive was done; run again in the next window or widen it")
    return left
