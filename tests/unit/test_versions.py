"""The upgrade-path planner on the fixture's tag set (pure: no git needed for the rules)."""

from __future__ import annotations

import pytest

from mender_upgrade.sandbox.releases import IGNORED_TAGS, all_fixture_tags
from mender_upgrade.tasks.versions import Version, mongo_major, plan_upgrade_path, stable_versions

TAGS = all_fixture_tags() + IGNORED_TAGS


@pytest.mark.parametrize("current,target,hops", [
    ("2.6.1", "2.6.4", ["2.6.4"]),                      # patch within a minor
    ("2.6.4", "2.7.2", ["2.7.2"]),                      # next minor
    ("2.6.4", "3.0.2", ["2.7.2", "3.0.2"]),             # last minor -> next major, two hops
    ("2.6.0", "2.7.1", ["2.7.1"]),                      # the final hop may be any patch
    ("2.5.1", "3.1.0", ["2.6.4", "2.7.2", "3.0.2", "3.1.0"]),  # intermediates at latest patch
    ("3.3.1", "3.6.5", ["3.6.5"]),                      # documented shortcut, no 3.4/3.5
    ("3.4.0", "3.6.2", ["3.6.2"]),                      # shortcut from 3.4 too
    ("3.3.0", "3.4.0", ["3.4.0"]),                      # shortcut does not overshoot a 3.4 target
    ("3.2.0", "3.7.11", ["3.3.2", "3.6.5", "3.7.11"]),  # shortcut inside a longer path
    ("3.6.5", "3.7.11", ["3.7.11"]),                    # mongo 4.4 -> 5.0 hop
    ("2.6.4", None, ["2.7.2", "3.0.2", "3.1.1", "3.2.2", "3.3.2", "3.6.5", "3.7.11"]),  # default: newest allowed
])
def test_allowed_paths(current, target, hops):
    plan = plan_upgrade_path(current, TAGS, target)
    assert plan.refused is None
    assert plan.hops == hops
    assert plan.target == hops[-1]


@pytest.mark.parametrize("current,target,words", [
    ("2.7.2", "2.6.4", "downgrades are not supported"),
    ("2.6.4", "2.9.0", "not a tag of this repository"),
    ("3.7.11", "3.8.5", "past the docker-compose production line"),
    ("3.7.0", "3.8.0", "past the docker-compose production line"),
    ("2.6.4", "3.0.3-build3", "not a stable release tag"),
    ("2.6.4", "2.7.0b1", "not a stable release tag"),
    ("2.6.4", "saas-v2023.01.01", "not a stable release tag"),
    ("2.6.4", "3.0.0; rm -rf /", "not a stable release tag"),
    ("2.6.4", "--upload-pack=x", "not a stable release tag"),
    ("2.6.4", "2.7.2\n", "not a stable release tag"),
    ("3.8.5", None, "already past the docker-compose production line"),
    ("3.8.0", "3.8.5", "already past the docker-compose production line"),
])
def test_refusals_say_why_and_the_allowed_way(current, target, words):
    plan = plan_upgrade_path(current, TAGS, target)
    assert plan.hops == []
    assert words in plan.refused


def test_ignored_tags_never_count_as_versions():
    assert "3.0.3" not in [str(v) for v in stable_versions(TAGS)]
    assert max(stable_versions(TAGS)) == Version(3, 8, 5)


def test_plan_flags_alias_patch_and_mongo_change():
    plan = plan_upgrade_path("2.6.4", TAGS, "3.0.2")
    assert plan.alias_patch and plan.mongo_major_change is None
    assert any("1.7.1" in w for w in plan.warnings)
    plan = plan_upgrade_path("3.6.5", TAGS, "3.7.11")
    assert not plan.alias_patch and plan.mongo_major_change == ["4.4", "5.0"]
    assert any("AVX" in w for w in plan.warnings)


def test_mongo_majors_by_release():
    assert [mongo_major(Version.parse(v)) for v in ["2.2.2", "2.4.3", "2.5.1", "3.6.5", "3.7.11", "3.8.5"]] == \
        ["3.4", "3.6", "4.4", "4.4", "5.0", "6.0"]


@pytest.mark.parametrize("current,mongo", [("2.2.2", "3.4"), ("2.3.0", "3.6"), ("2.4.3", "3.6")])
def test_releases_on_a_mongo_the_driver_cannot_reach_are_refused_with_what_to_do(current: str, mongo: str) -> None:
    """pymongo 4.x speaks to MongoDB >= 4.4 only: the plan says so at once (no backup could be
    made), rather than a retried "does not answer" in the middle of a run."""
    import pymongo
    from pymongo.common import MIN_SUPPORTED_SERVER_VERSION
    assert MIN_SUPPORTED_SERVER_VERSION == "4.4"  # the installed driver's floor, which the refusal names
    plan = plan_upgrade_path(current, TAGS + [current], "2.6.4")
    assert plan.refused and not plan.hops
    assert f"Mender {current} runs MongoDB {mongo}" in plan.refused
    assert f"pymongo {pymongo.version}" in plan.refused and "MongoDB >= 4.4 (wire version >= 9)" in plan.refused
    assert "upgrade by hand to 2.5.x or later first" in plan.refused and "mongodump" in plan.refused


def test_the_first_release_on_mongo_44_is_planned() -> None:
    assert plan_upgrade_path("2.5.1", TAGS, "2.6.4").hops == ["2.6.4"]
