"""The run report's unavailability line, written and read back (the window guard's history)."""

from __future__ import annotations

from mender_upgrade.flows.report import RunReport, unavailability_parts


def test_unavailability_line_round_trips():
    report = RunReport(host="h", run_id="r", unavailability_s=31.4,
                       unavailability={"dump": 2.0, "delta": 0.5, "merge": 1.2, "cycle": 20.0, "gate": 7.1, "other": 0.6},
                       estimated_quiet_s=40.0, downtime_s=27.1)
    markdown = report.to_markdown()
    assert "- unavailability: 31.4 s (dump 2.0 s, delta 0.5 s, merge 1.2 s, cycle 20.0 s, gate 7.1 s, other 0.6 s)" in markdown
    assert unavailability_parts(markdown) == report.unavailability


def test_reports_without_unavailability_give_none():
    assert unavailability_parts(RunReport(host="h", run_id="r", downtime_s=3.0).to_markdown()) is None
    assert unavailability_parts("- unavailability: 3 s (nonsense)") is None
    assert unavailability_parts("") is None


def test_rolled_back_runs_show_their_unavailability_but_keep_it_out_of_the_history():
    report = RunReport(host="h", run_id="r", outcome="rolled back", unavailability_s=95.2,
                       unavailability={"dump": 2.0, "delta": 0.5, "merge": 1.2, "rollback": 60.3, "other": 31.2})
    markdown = report.to_markdown()
    assert ("- unavailability: 95.2 s until the old version served again (dump 2.0 s, delta 0.5 s, merge 1.2 s, "
            "rollback 60.3 s, other 31.2 s)") in markdown
    assert unavailability_parts(markdown) is None  # the window guard estimates from completed runs only
