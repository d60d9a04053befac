"""Library failures become typed errors at the task adapter."""

from __future__ import annotations

import docker.errors
import pytest
import requests
from pymongo.errors import AutoReconnect

from mender_upgrade.tasks.errors import (ComposeCommandFailed, DockerUnavailable, MongoFailed, TransientError,
                                         also_failed, typed_outside_errors)


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


def test_also_failed_keeps_the_first_error_and_names_the_clean_up():

    first = TransientError("S3 timed out", "check the endpoint")
    also_failed(first, "starting the writers again (mender-useradm)", ComposeCommandFailed("`./run start` failed"))
    assert first.message == ("S3 timed out; starting the writers again (mender-useradm) failed too: "
                             "`./run start` failed")
    assert str(first).startswith(first.message) and first.hint == "check the endpoint"
    library = KeyError("manifest")  # not ours: its type and text stay, the clean-up goes in a note
    also_failed(library, "starting the writers again", RuntimeError("no engine"))
    assert library.args == ("manifest",)
    assert library.__notes__ == ["starting the writers again failed too: no engine"]
