"""Outside output made safe to show: reports, state messages, logs and webhooks quote it.

`./run` output tails (a resolved compose config holds every secret of prod.yml), git's errors
(a remote URL may carry a token) and parse errors (they quote the offending line) pass through
here before they reach anything that is stored or sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "**********"

# scheme://user:password@host or scheme://token@host
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"]+@")
# KEY=value, KEY: value, "key": "value" where the key's name says it holds a secret
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<key>\b[\w.-]*(?:secret|password|passwd|pwd|token|auth|credential|private|access_key|api_key|apikey)"
    r"[\w.-]*[\"']?)(?P<sep>\s*[:=]\s*)(?P<value>[\"']?[^\s\"',}]+)", re.IGNORECASE)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL credentials, values of secret-named keys and every known secret masked."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter ones would mask ordinary words
            text = text.replace(secret, MASK)
    return text


def parse_error_position(exc: Exception) -> str:
    """Where a YAML/TOML parse error is, and what it is, without the quoted source line."""
    marked = [f"{what} (line {mark.line + 1}, column {mark.column + 1})"
              for what, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                                 (getattr(exc, "problem", None), getattr(exc, "problem_mark", None)))
              if what and mark is not None]
    if marked:
        return ": ".join(marked)
    lineno = getattr(exc, "lineno", None)
    if lineno:  # tomllib, Python 3.14+
        return f"{getattr(exc, 'msg', 'syntax error')} (line {lineno})"
    first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    # tomllib before 3.14: "Invalid value (at line 3, column 10)" quotes no source text
    return first if "(at line " in first else exc.__class__.__name__


# What code from the target release (verify-docker-versions, ./run config -q of the dry run, run
# before anyone approved that release) may see of our environment: enough for docker-compose.
_KEPT_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TERM", "TMPDIR", "USER", "LOGNAME", "SHELL", "TZ",
                         "XDG_RUNTIME_DIR", "PYTHONIOENCODING"})
_KEPT_PREFIXES = ("LC_", "DOCKER_", "COMPOSE_")
_SECRET_NAME = re.compile(r"AUTH|PASS|TOKEN|SECRET|KEY|CREDENTIAL|SESSION|COOKIE", re.IGNORECASE)


def untrusted_environment(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without anything secret: only the variables docker-compose needs, none whose name
    says it holds a secret, none whose value carries URL credentials."""
    return {name: value for name, value in environ.items()
            if (name in _KEPT_NAMES or name.startswith(_KEPT_PREFIXES)) and not _SECRET_NAME.search(name)
            and not _URL_CREDENTIALS.search(value)}
