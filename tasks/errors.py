"""Typed errors: each says what went wrong and what to do, and whether retrying can help.

The flow retries only `TransientError`s; everything else stops the run at once.
"""

from __future__ import annotations


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


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only what may pass by itself (network, daemon)."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False
