"""Maintenance-window arithmetic (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mender_upgrade.tasks.settings import MaintenanceWindow
from mender_upgrade.tasks.window import WindowClosed, require_time_for_downtime, seconds_left, window_bounds

UTC = timezone.utc


def test_empty_start_opens_at_run_start():
    run = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    start, end = window_bounds(MaintenanceWindow(duration_minutes=90), run)
    assert (start, (end - start).total_seconds()) == (run, 5400)


def test_hh_mm_in_a_time_zone_is_today_there():
    run = datetime(2026, 7, 4, 0, 30, tzinfo=UTC)  # 02:30 in Berlin (summer time)
    start, _ = window_bounds(MaintenanceWindow(start="02:00", timezone="Europe/Berlin"), run)
    assert start.astimezone(UTC) == datetime(2026, 7, 4, 0, 0, tzinfo=UTC)


def test_downtime_refused_when_too_little_is_left():
    w = MaintenanceWindow(start="2026-11-28T01:00", duration_minutes=30, restore_margin_minutes=10,
                          estimated_downtime_s=600)
    run = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    assert require_time_for_downtime(w, run, datetime(2026, 11, 28, 1, 5, tzinfo=UTC)) == 25 * 60
    with pytest.raises(WindowClosed) as err:
        require_time_for_downtime(w, run, datetime(2026, 11, 28, 1, 15, tzinfo=UTC))
    assert "15.0 min left" in str(err.value) and "20.0 min" in str(err.value)


def test_late_run_outside_its_window_does_nothing():
    w = MaintenanceWindow(start="2026-11-28T01:00", duration_minutes=60)
    late = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert seconds_left(w, late, late) == 0
    with pytest.raises(WindowClosed):
        require_time_for_downtime(w, late, late)


def test_window_not_open_yet():
    w = MaintenanceWindow(start="2026-11-28T01:00")
    early = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    with pytest.raises(WindowClosed) as err:
        require_time_for_downtime(w, early, early)
    assert "has not opened yet" in str(err.value)


def test_quiet_period_estimate_from_measured_rates_and_previous_runs():
    from mender_upgrade.tasks.window import estimate_quiet_period_s
    previous = [{"dump": 4.0, "delta": 1.0, "merge": 2.0, "cycle": 10.0, "gate": 5.0, "other": 1.0},
                {"dump": 9.0, "delta": 3.0, "cycle": 12.0, "gate": 6.0}]
    # the previous dump's 300 MiB at the pre-copy's 100 MiB/s, plus the slowest rest (21 s)
    assert estimate_quiet_period_s(300 * 2**20, 100 * 2**20, previous, 120) == pytest.approx(3 + 21)
    # no dump size or no rate: the slowest previous dump
    assert estimate_quiet_period_s(None, 100.0, previous, 120) == pytest.approx(9 + 21)
    assert estimate_quiet_period_s(300, 0.0, previous, 120) == pytest.approx(9 + 21)
    # no previous run: the configured estimate for the rest
    assert estimate_quiet_period_s(50 * 2**20, 10 * 2**20, [], 120) == pytest.approx(5 + 120)
    assert estimate_quiet_period_s(None, 0.0, [], 120) == 120


def test_window_guard_uses_the_estimate_when_given():
    w = MaintenanceWindow(start="2026-11-28T01:00", duration_minutes=30, restore_margin_minutes=10,
                          estimated_downtime_s=600)
    run = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    late = datetime(2026, 11, 28, 1, 15, tzinfo=UTC)  # 15 min left: too little for 10 + 10 min
    assert require_time_for_downtime(w, run, late, estimated_s=60) == 15 * 60
    with pytest.raises(WindowClosed, match="16.0 min"):
        require_time_for_downtime(w, run, late, estimated_s=360)
