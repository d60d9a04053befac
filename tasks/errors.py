"""Typed errors: each says what went wrong and what to do, and whether retrying can help.

The flow retries only `TransientError`s; everything else stops the run at once.
"""

from __future__ import annotations

from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UpgradeError(Exception):
    """Base of every error this tool raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message


class TransientError(UpgradeError):
    """A failure of something outside us (network, daemon) that may pass: retry with backoff."""


class ComposeCommandFailed(UpgradeError):
    """`./run <args>` exited non-zero."""


class HealthGateFailed(UpgradeError):
    """Services did not all become running, healthy and stable in time."""


def also_failed(first: BaseException, what: str, cleanup: BaseException) -> None:
    """Record on `first` that the clean-up after it (`what`) failed too, so the error that is
    raised stays the first one (its type decides retries; its message says what went wrong
    first) and still names the clean-up's failure (offen's `errors.Join`)."""
    also = f"{what} failed too: {cleanup.message if isinstance(cleanup, UpgradeError) else cleanup}"
    first.add_note(also)
    if isinstance(first, UpgradeError):
        first.message = f"{first.message}; {also}"
        first.args = (first.message,)


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only what may pass by itself (network, daemon)."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


class DockerUnavailable(TransientError):
    """The Docker engine did not answer or refused a call (e.g. while dockerd restarts)."""


class MongoFailed(UpgradeError):
    """A MongoDB call failed (connection lost, command refused)."""


def typed_outside_errors(function: Callable[P, R]) -> Callable[P, R]:
    """At the adapter (the task wrappers): failures of the Docker SDK and pymongo become typed
    errors with a hint, so the flow and the report never see a bare library exception."""
    import functools

    import docker.errors
    import requests
    from pymongo.errors import PyMongoError

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (requests.ConnectionError, requests.Timeout, docker.errors.DockerException) as exc:
            raise DockerUnavailable(f"the Docker engine failed during {function.__name__}: "
                                    f"{exc.__class__.__name__}: {exc}",
                                    "check `systemctl status docker` and the dockerd log") from exc
        except PyMongoError as exc:
            raise MongoFailed(f"MongoDB failed during {function.__name__}: {exc.__class__.__name__}: {exc}",
                              "check that mender-mongo runs; see its log") from exc
    return wrapper
