"""The host decides what is safe: a root-owned host file on the Mender host.

Anyone who can start a run can set its parameters, so parameters cannot be trusted with what
protects the server: which clone and compose project are touched, where the backup goes and with
which credentials, the approval policy, the host id (the lock), the cleanup. Those come from
`/etc/mender-upgrade/host.toml` (root-owned, not group/world-writable). Run parameters may only
narrow them: pick the target, add an approval, shorten the approval timeout, skip the cleanup.
A run that asks for more is refused before anything changes, naming each field.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.redaction import parse_error_position
from mender_upgrade.tasks.settings import ApprovalPolicy, BackupSettings, UpgradeSettings

HOST_FILE_ENV = "MENDER_UPGRADE_HOST_FILE"  # another path, for tests and non-standard layouts
DEFAULT_HOST_FILE = Path("/etc/mender-upgrade/host.toml")
# 0600: the file may hold the S3 secret key; the worker or `serve` that reads it runs as root (Docker).
HOST_FILE_HINT = ("create it as root with `install -m 0600 -o root -g root host.toml /etc/mender-upgrade/host.toml` "
                  "(see README, 'The host file')")


class HostFileUnsafe(UpgradeError):
    """The host file is missing where it is required, unreadable, wrong, or writable by others."""


class ParametersWiden(UpgradeError):
    """Run parameters ask for more than the host file allows (or carry a secret)."""

    def __init__(self, message: str, hint: str = "", host_id: str | None = None) -> None:
        super().__init__(message, hint)
        self.host_id = host_id  # the host file's id, so the refusal lands in this host's history


class SecretInParameters(ParametersWiden):
    """A secret typed into the run parameters, which the server keeps in clear."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(
            f"{', '.join(paths)}: a secret typed into the run parameters is refused (the Prefect server "
            "keeps parameters in clear, for everyone who can read the run; it was blanked there)",
            "leave it empty and name a Prefect Secret block in backup.secret_block, put the credentials in "
            "the host file, or give the worker AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment")
        self.paths = paths


class HostPolicy(BaseModel):
    """What the host file holds: the settings a run's parameters may not widen."""

    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,100}$", description="this Mender host's id (locks, history)")
    integration_dir: Path = Field(..., description="the one integration clone runs may touch")
    compose_project: str = Field("menderproduction", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    cleanup_apply: bool = Field(True, description="false: no run may delete deviceauth leftovers")
    backup: BackupSettings = Field(..., description="the backup target and its credentials")
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)


@dataclass(frozen=True)
class LoadedPolicy:
    path: Path
    policy: HostPolicy


def host_file_path() -> tuple[Path, bool]:
    """(path, explicitly chosen): the env var's path, or the default one."""
    chosen = os.environ.get(HOST_FILE_ENV)
    return (Path(chosen), True) if chosen else (DEFAULT_HOST_FILE, False)


def load_host_policy() -> LoadedPolicy | None:
    """The host file's policy; None when the default file does not exist (a path chosen
    through the environment must exist). Refuses a file others could have written."""
    path, chosen = host_file_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        if chosen:
            raise HostFileUnsafe(f"host file {path} (from ${HOST_FILE_ENV}) does not exist", HOST_FILE_HINT) from None
        return None
    if not stat.S_ISREG(info.st_mode):
        raise HostFileUnsafe(f"host file {path} is not a regular file", HOST_FILE_HINT)
    if info.st_uid != 0:
        raise HostFileUnsafe(f"host file {path} is owned by uid {info.st_uid}, not root: whoever owns it "
                             "could widen what runs may do", f"`chown root:root {path}`")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HostFileUnsafe(f"host file {path} is writable by its group or by everyone "
                             f"(mode {stat.S_IMODE(info.st_mode):04o})", f"`chmod go-w {path}`")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        # The position only: the message of a TOML error can quote the line, which may hold a secret.
        raise HostFileUnsafe(f"host file {path} is not valid TOML: {parse_error_position(exc)}", "fix its syntax") from None
    try:
        return LoadedPolicy(path, HostPolicy.model_validate(data))
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise HostFileUnsafe(f"host file {path} is invalid: {fields}", "fix those fields") from None


# Fields the host file owns outright: a run may repeat the host's value, never change it.
OWNED = ("host_id", "integration_dir", "compose_project", "approval.allowed_signers",
         *(f"backup.{name}" for name in BackupSettings.model_fields))
# Switches a run may turn on but not off (each adds a safeguard).
ONLY_ON = ("approval.require_approval", "approval.approve_before_downtime", "approval.require_signed")
# Switches a run may turn off but not on (each does more to the server).
ONLY_OFF = ("cleanup_apply",)
# Limits a run may lower but not raise.
AT_MOST = ("approval.timeout_minutes",)
SECRET_FIELDS = ("backup.secret_access_key",)


def owned_fields() -> dict:
    """The host-owned fields as a pydantic `exclude` mapping ({"backup": True, "integration_dir": True, ...})."""
    out: dict = {}
    for path in OWNED:
        *parents, leaf = path.split(".")
        where = out
        for part in parents:
            where = where.setdefault(part, {})
        where[leaf] = True
    return out


def require_host_policy() -> LoadedPolicy:
    """The host file, or why a process that starts runs through the API cannot work without it."""
    loaded = load_host_policy()
    if loaded is None:
        path, _ = host_file_path()
        raise HostFileUnsafe(f"no host file at {path}: runs started through the Prefect API (served, scheduled, "
                             "from the UI) take the integration dir, backup target and approval policy from it",
                             HOST_FILE_HINT)
    return loaded


def _get(model: BaseModel, path: str) -> Any:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _is_set(model: BaseModel, path: str) -> bool:
    """Whether the run's parameters name `path` (a field left out takes the host's value)."""
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in model.model_fields_set:
            return False
        model = getattr(model, part)
    return leaf in model.model_fields_set


def _set(data: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def narrow(run: UpgradeSettings, loaded: LoadedPolicy) -> UpgradeSettings:
    """The settings this run may use: the host's, narrowed by the run's parameters.
    ParametersWiden names every field that asks for more than the host file allows."""
    host = loaded.policy
    data = run.model_dump()
    refused: list[str] = []
    for path in OWNED:
        asked, allowed = _get(run, path), _get(host, path)
        if _is_set(run, path) and asked != allowed:
            shown = "a different value" if path in SECRET_FIELDS else f"{_plain(asked)!r}, the host file says {_plain(allowed)!r}"
            refused.append(f"{path}: the run asked for {shown}; only the host file sets it")
        _set(data, path, allowed)
    for path in ONLY_ON + ONLY_OFF + AT_MOST:
        asked, allowed = _get(run, path), _get(host, path)
        if not _is_set(run, path):
            _set(data, path, allowed)
            continue
        widens = ((path in ONLY_ON and allowed and not asked) or (path in ONLY_OFF and asked and not allowed)
                  or (path in AT_MOST and asked > allowed))
        if widens:
            refused.append(f"{path}: the run asked for {asked!r}, the host file allows "
                           f"{'at most ' if path in AT_MOST else ''}{allowed!r}")
            _set(data, path, allowed)
    if refused:
        raise ParametersWiden(f"run parameters ask for more than the host file {loaded.path} allows: "
                              + "; ".join(refused),
                              "leave those fields out of the run's parameters (the host file's values apply), "
                              "or have root change the host file", host_id=host.host_id)
    return UpgradeSettings.model_validate(data)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def secrets_in_parameters(run: UpgradeSettings) -> list[str]:
    """The secret fields a run's parameters carry (the server stores parameters in clear)."""
    return [path for path in SECRET_FIELDS if _is_set(run, path) and _get(run, path) is not None]


def settings_for_run(run: UpgradeSettings, started_through_api: bool) -> tuple[UpgradeSettings, list[str]]:
    """(settings to use, warnings). A run started through the Prefect API (a deployment: the UI's
    Run button, a schedule, a worker) needs the host file and may not carry a secret; a run started
    at this host's terminal without a host file keeps its own settings, with a warning."""
    if started_through_api and (secrets := secrets_in_parameters(run)):
        raise SecretInParameters(secrets)
    if started_through_api:
        return narrow(run, require_host_policy()), []
    loaded = load_host_policy()
    if loaded is None:
        path, _ = host_file_path()
        return run, [f"no host file at {path}: this run's own settings decide the approval policy and backup target"]
    return narrow(run, loaded), []
