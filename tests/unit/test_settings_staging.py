"""The staging policy settings: defaults, and every wrong value named with what it accepts."""

from __future__ import annotations

import pytest

from mender_upgrade.tasks.settings import ConfigInvalid, StagingPolicy, load_settings


def test_defaults_require_nothing_and_push_nowhere() -> None:
    staging = load_settings({}).staging
    assert staging.require_completed_on is None and staging.push_remote is None
    staging = load_settings({"staging": {"require_completed_on": "stg-1.example", "push_remote": "company"}}).staging
    assert (staging.require_completed_on, staging.push_remote) == ("stg-1.example", "company")


def test_every_staging_field_is_described() -> None:
    assert all(field.description for field in StagingPolicy.model_fields.values())


@pytest.mark.parametrize("data,field", [
    ({"require_completed_on": "-x"}, "staging.require_completed_on: must match"),
    ({"require_completed_on": ".hidden"}, "staging.require_completed_on: must match"),
    ({"require_completed_on": "a b"}, "staging.require_completed_on: must match"),
    ({"require_completed_on": "../prod"}, "staging.require_completed_on: must match"),
    ({"require_completed_on": ""}, "staging.require_completed_on: must match"),
    ({"push_remote": "--upload-pack=x"}, "staging.push_remote: must match"),
    ({"push_remote": "https://evil.example/x.git"}, "staging.push_remote: must match"),
    ({"push_remote": "a..b"}, "staging.push_remote: must match"),
    ({"push_remote": "company\n"}, "staging.push_remote: must match"),
    ({"push_remote": "x" * 65}, "staging.push_remote"),
    ({"push": "company"}, "staging.push: is not a known setting"),
])
def test_each_wrong_staging_value_is_named(data: dict, field: str) -> None:
    with pytest.raises(ConfigInvalid) as err:
        load_settings({"staging": data})
    assert field in str(err.value)
