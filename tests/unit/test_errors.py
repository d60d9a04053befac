"""Library failures become typed errors at the task adapter."""

from __future__ import annotations

import docker.errors
import pytest
import requests
from pymongo.errors import AutoReconnect

from mender_upgrade.tasks.errors import DockerUnavailable, MongoFailed, TransientError, typed_outside_errors


@pytest.mark.parametrize("raised,typed,words", [
    (requests.ConnectionError("Connection aborted: /var/run/docker.sock"), DockerUnavailable, "Docker engine"),
    (docker.errors.APIError("500 Server Error: container is restarting"), DockerUnavailable, "Docker engine"),
    (AutoReconnect("connection closed"), MongoFailed, "MongoDB"),
])
def test_sdk_failures_become_typed_errors_naming_the_step(raised, typed, words):
    @typed_outside_errors
    def cycle_task():
        raise raised

    with pytest.raises(typed) as err:
        cycle_task()
    assert words in err.value.message and "cycle_task" in err.value.message and err.value.hint
    assert err.value.__cause__ is raised
    assert isinstance(err.value, TransientError) == (typed is DockerUnavailable)


def test_other_errors_pass_unchanged():
    @typed_outside_errors
    def plan_task():
        raise KeyError("x")

    with pytest.raises(KeyError):
        plan_task()
