"""Maintenance-window arithmetic (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tasks.settings import MaintenanceWindow
from tasks.window import WindowClosed, require_time_for_downtime, seconds_left, window_bounds

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
