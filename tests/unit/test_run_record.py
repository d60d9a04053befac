"""The run's outcome: one enum, set in one place of the flow, read back from any report."""

from __future__ import annotations

import ast
from pathlib import Path

from mender_upgrade.tasks.run_record import Outcome, artifact_key, description, parse_description, report_key

UPGRADE_FLOW = Path(__file__).resolve().parents[2] / "flows" / "upgrade.py"


def test_descriptions_round_trip_every_outcome():
    for outcome in Outcome:
        found = parse_description(description(outcome, "h1", "2.6.4", "2.7.2", {"reason": "why"}))
        assert found.outcome is outcome and found.reason == "why"


def test_older_and_unknown_headlines_still_read():
    old = parse_description("upgrade rolled back: h1 2.6.4 -> 2.7.2")  # before the JSON summary
    assert old.outcome is Outcome.ROLLED_BACK and (old.host, old.current, old.target) == ("h1", "2.6.4", "2.7.2")
    other = parse_description("upgrade paused forever: h1 2.6.4 -> 2.7.2")  # a word this version does not know
    assert other.outcome == "paused forever" and not isinstance(other.outcome, Outcome)
    assert other.outcome != Outcome.COMPLETED


def test_artifact_keys_carry_the_host():
    assert artifact_key("upgrade-health", "Mender_1.example.com") == "upgrade-health-mender-1-example-com"
    assert report_key("a.b") == "upgrade-report-a-b"


def test_the_flow_sets_the_outcome_in_one_place():
    """Every other end raises RunEnded(outcome, ...); only upgrade_mender writes report.outcome."""
    tree = ast.parse(UPGRADE_FLOW.read_text())
    writers = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            for node in ast.walk(function):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                for target in targets:
                    for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                        if isinstance(t, ast.Attribute) and t.attr == "outcome" and \
                                not (isinstance(t.value, ast.Name) and t.value.id == "self"):
                            writers.append(function.name)
    assert writers == ["upgrade_mender"]
    outcome_strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                       and n.value in {o.value for o in Outcome}]
    assert outcome_strings == [], "name outcomes by Outcome.<NAME>, not by their text"
