"""The one place where the CLI turns a failure into a message on stderr and an exit code.

Expected failures (our typed errors, the Prefect server not answering, a question answered no)
never print a traceback; only a bug does.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_CODES_HELP = ("Exit codes: 0 done; 1 failed (the message says what to do); 2 usage: a wrong option, "
                   "or a config file missing or invalid; 3 refused (by the upgrade rules, a window, a lock) "
                   "or stopped by a person (an approval rejected, a question answered no, Ctrl-C).")
stderr = Console(stderr=True, soft_wrap=True)  # a message stays one line: grep-able, paths whole


class Stopped(Exception):
    """A person (or the clock of an approval) stopped the command; `message` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _refusal_types() -> tuple[type[Exception], ...]:
    # Imported when needed only: some of them load Prefect, which `--help` should not wait for.
    from mender_upgrade.flows.lock import LockHeldByLiveRun, UpgradeAlreadyRunning
    from mender_upgrade.tasks.mongo_upgrade import MongoHopRefused
    from mender_upgrade.tasks.staging import StagingNotDone
    from mender_upgrade.tasks.versions import PlanRefused
    from mender_upgrade.tasks.window import WindowClosed
    return PlanRefused, StagingNotDone, WindowClosed, UpgradeAlreadyRunning, LockHeldByLiveRun, MongoHopRefused


def _usage_types() -> tuple[type[Exception], ...]:
    from mender_upgrade.tasks.repository import InvalidRef
    from mender_upgrade.tasks.settings import ConfigInvalid
    return ConfigInvalid, InvalidRef


def _say(label: str, message: str, hint: str = "") -> None:
    stderr.print(f"[red]{label}:[/red] {escape(message)}", highlight=False)
    if hint:
        stderr.print(f"  -> {escape(hint)}", highlight=False)


def _prefect_unreachable(exc: Exception) -> str:
    from prefect.settings import PREFECT_API_URL
    return f"the Prefect API at {PREFECT_API_URL.value() or '?'} does not answer ({exc.__class__.__name__})"


def exit_for(exc: BaseException) -> int:
    """Say what `exc` means on stderr; the exit code for it."""
    import httpx

    from mender_upgrade.sandbox.processes import SandboxError
    from mender_upgrade.tasks.errors import UpgradeError
    if isinstance(exc, Stopped):
        _say("stopped", exc.message)
        return EXIT_STOPPED
    if isinstance(exc, (typer.Abort, KeyboardInterrupt)):
        _say("stopped", "not confirmed: nothing was changed" if isinstance(exc, typer.Abort) else "interrupted")
        return EXIT_STOPPED
    if isinstance(exc, UpgradeError):
        if isinstance(exc, _refusal_types()):
            _say("refused", exc.message, exc.hint)
            return EXIT_STOPPED
        _say("error", exc.message, exc.hint)
        return EXIT_USAGE if isinstance(exc, _usage_types()) else EXIT_FAILED
    if isinstance(exc, SandboxError):
        _say("error", str(exc))
        return EXIT_FAILED
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    if isinstance(exc, ObjectNotFound):
        _say("error", "not found on the Prefect server: "
             f"{exc.http_exc.request.url.path if isinstance(exc.http_exc, httpx.HTTPStatusError) else exc}",
             "check the id (`mender-upgrade history` lists whole run ids) and PREFECT_API_URL")
        return EXIT_FAILED
    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code == 401:
        _say("error", f"the Prefect API at {exc.request.url.scheme}://{exc.request.url.netloc.decode()} refused our "
                      "credentials (HTTP 401): the auth string is wrong or missing",
             "set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password)")
        return EXIT_FAILED
    if isinstance(exc, PrefectHTTPStatusError):
        _say("error", f"the Prefect server answered {exc.response.status_code}: {exc.response.text[:300]}")
        return EXIT_FAILED
    if isinstance(exc, httpx.TransportError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        from prefect.settings import PREFECT_API_URL
        _say("error", f"the Prefect API at {PREFECT_API_URL.value()} presents a certificate this machine does not "
                      f"trust: {exc}", "set SSL_CERT_FILE to the certificate of the CA that signed it")
        return EXIT_FAILED
    if isinstance(exc, httpx.TransportError):
        _say("error", _prefect_unreachable(exc),
             "start it, or unset PREFECT_API_URL to use the local server on 127.0.0.1:4200 (started when needed)")
        return EXIT_FAILED
    raise exc  # a bug: let its traceback show


class HandledGroup(TyperGroup):
    """The app's group: every command runs inside this one handler."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.TyperException):
            # typer.Exit(code) and usage errors (typer prints those itself, exit 2). Typer >= 0.23
            # carries its own copy of click: `click`'s classes are not the ones it raises.
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(exit_for(exc)) from None
