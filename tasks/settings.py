"""One typed configuration, shared by the CLI, the deployments and the Prefect UI form.

Every field has a default or fails with an error naming the field and what is accepted.
Secrets are `SecretStr`: they print as '**********' in logs, reprs and the UI.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from mender_upgrade.tasks.backup import load_signing_key
from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.repository import REMOTE_NAME_PATTERN
from mender_upgrade.tasks.store import BackupStore, LocalStore, S3Store, parse_target, s3_client

VERSION_PATTERN = r"^\d+\.\d+\.\d+$"
# A host id given to look up another host's runs: never starting with '-' or '.', so it cannot
# pass for an option or a relative name anywhere it ends up.
HOST_REF_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"


def tool_home() -> Path:
    """The tool's own folder on this machine (Prefect home, manifest signing key)."""
    return Path(os.environ.get("MENDER_UPGRADE_HOME", Path.home() / ".mender-upgrade"))


class ConfigInvalid(UpgradeError):
    """A configuration value is wrong; the message names the field and what is accepted."""


class BackupMode(str, Enum):
    quiesce = "quiesce"  # stop the API services during dump and tar (consistent)
    hot = "hot"          # stop nothing (no downtime, may be inconsistent)


class BackupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field("file:///var/backups/mender-upgrade",
                        description="where backups go: s3://bucket/prefix or file:///folder")
    endpoint_url: str | None = Field(None, description="S3 endpoint URL for non-AWS servers, e.g. http://127.0.0.1:8333")
    region: str = Field("us-east-1", description="S3 region")
    path_style: bool = Field(True, description="path-style S3 addressing (MinIO, SeaweedFS, Ceph)")
    access_key_id: str | None = Field(None, description="S3 access key; empty: environment or AWS profile")
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key, for config files and the host "
                                                "file only: a run started from the UI or API that carries one is "
                                                "refused; use secret_block, the host file or the worker's environment")
    aws_profile: str | None = Field(None, description="AWS profile name from ~/.aws/config")
    secret_block: str | None = Field(None, description="name of a Prefect Secret block holding the S3 secret key")
    object_lock_days: int | None = Field(None, ge=1, le=3650,
                                         description="S3 Object Lock retention (days) for every backup object")
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        "GOVERNANCE", description="Object Lock mode: COMPLIANCE cannot be shortened or lifted by anyone, "
        "GOVERNANCE by accounts with the bypass permission")
    immutable: bool = Field(False, description="refuse an S3 bucket without versioning, Object Lock and a "
                            "retention period (object_lock_days or the bucket's default), so no one (not even "
                            "a leaked key) can delete a backup early")
    signing_key_file: Path | None = Field(
        None, description="file holding the key that signs backup manifests (HMAC-SHA256); keep it off the "
        "backup target. Empty: ~/.mender-upgrade/backup-signing.key (or $MENDER_UPGRADE_HOME), created 0600 on first use")
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        None, description="ask S3 to encrypt objects at rest")
    mode: BackupMode = Field(BackupMode.quiesce, description="quiesce stops the API services while backing up; hot stops nothing")
    keep_last: int = Field(5, ge=1, le=1000, description="verified backups to keep; older ones are pruned after a new one is verified")
    part_size_mib: int = Field(8, ge=5, le=512, description="S3 multipart part size")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        try:
            parse_target(value)
        except UpgradeError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None
        return value

    @model_validator(mode="after")
    def _secret_block_needs_key_id(self) -> "BackupSettings":
        if self.secret_block and not self.access_key_id:
            # S3 clients refuse a secret key without its key id (boto3: partial credentials).
            raise ValueError("backup.access_key_id: needed with backup.secret_block (the block holds only the "
                             "secret key); set the access key id beside it")
        return self

    @model_validator(mode="after")
    def _immutable_needs_s3(self) -> "BackupSettings":
        if self.immutable and not self.target.startswith("s3://"):
            raise ValueError("backup.immutable needs an s3:// target (a local folder cannot be made immutable)")
        return self

    def s3_secret(self) -> str | None:
        """The S3 secret key: from the settings, else the Secret block `secret_block`, else (with an
        access key id set) AWS_SECRET_ACCESS_KEY of this process (a worker's environment). None
        without an access key id: boto3 then finds both keys itself (environment, profile)."""
        if self.secret_access_key:
            return self.secret_access_key.get_secret_value()
        if self.secret_block:
            from prefect.blocks.system import Secret  # only where the block is used
            try:
                return str(cast(Secret, Secret.load(self.secret_block)).get())  # load() is sync here
            except ValueError:  # Prefect's "Unable to find block document named ..."
                raise ConfigInvalid(f"backup.secret_block: no Secret block named {self.secret_block!r} on this "
                                    "Prefect server",
                                    "create it under that name in the UI (Blocks, +, Secret; see README, "
                                    "'The host file')") from None
        if self.access_key_id:
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
            if not secret:
                raise ConfigInvalid(f"backup.secret_access_key: no S3 secret key for access key id "
                                    f"{self.access_key_id!r} (not in the settings, no backup.secret_block, "
                                    "no AWS_SECRET_ACCESS_KEY in the environment)",
                                    "put it in the config file's backup.secret_access_key (`serve` keeps it in a "
                                    "Secret block), or set AWS_SECRET_ACCESS_KEY for the process that runs the flow")
            return secret
        return None

    def signing_key_path(self) -> Path:
        return self.signing_key_file or tool_home() / "backup-signing.key"

    def open_store(self, host_id: str = "") -> BackupStore:
        """The target, or with `host_id` that host's namespace `<target>/<host_id>/` with the
        manifest signing key loaded (what backups, restores and prunes use)."""
        scheme, where, prefix = parse_target(self.target)
        if host_id and not re.match(HOST_REF_PATTERN, host_id):
            raise ConfigInvalid(f"host id {host_id!r} cannot name a backup folder", f"set host_id to match {HOST_REF_PATTERN}")
        key = load_signing_key(self.signing_key_path()) if host_id else b""
        if scheme == "file":
            return LocalStore(Path(where) / host_id if host_id else Path(where), host_id=host_id, signing_key=key)
        client = s3_client(self.endpoint_url, self.region, self.access_key_id, self.s3_secret(),
                           self.path_style, self.aws_profile)
        return S3Store(bucket=where, prefix=f"{prefix}/{host_id}" if host_id else prefix, client=client,
                       endpoint=self.endpoint_url or "AWS S3", server_side_encryption=self.server_side_encryption,
                       object_lock_days=self.object_lock_days, object_lock_mode=self.object_lock_mode,
                       immutable=self.immutable, part_size=self.part_size_mib * 1024 * 1024,
                       host_id=host_id, signing_key=key)


class UpgradeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    integration_dir: Path = Field(Path("/opt/mender/integration"),
                                  description="root of the operator's mendersoftware/integration clone")
    target_version: str | None = Field(None, pattern=VERSION_PATTERN,
                                       description="Mender release to upgrade to (X.Y.Z); empty: the newest allowed")
    compose_project: str = Field("menderproduction", pattern=r"^[a-z0-9][a-z0-9_-]*$",
                                 description="compose project name the operator's ./run uses")
    backup: BackupSettings = Field(default_factory=BackupSettings)
    writer_services: list[str] | None = Field(
        None, description="services stopped while backing up in quiesce mode; empty: every Mender API service")
    health_timeout_s: float = Field(300, gt=0, le=3600, description="how long to wait for all services to be healthy")
    stability_window_s: float = Field(20, ge=0, le=600, description="services must stay healthy this long")
    gateway_smoke: bool = Field(True, description="after every service answers its health endpoint, call the "
                                "gateway (https on 443) as users and devices do: login 401, device auth, storage host")
    cleanup_apply: bool = Field(True, description="delete deviceauth decommissioning leftovers (saved to the backup target first)")
    host_id: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,100}$",
                         description="names this Mender host in locks and history; empty: this machine's hostname")
    lock_wait_s: float = Field(10, ge=0, le=86400, description="how long a second run for the same host waits for the first")
    window: "MaintenanceWindow" = Field(default_factory=lambda: MaintenanceWindow())
    approval: "ApprovalPolicy" = Field(default_factory=lambda: ApprovalPolicy())
    staging: "StagingPolicy" = Field(default_factory=lambda: StagingPolicy())

    def host(self) -> str:
        import socket
        return self.host_id or socket.gethostname()

    def backup_store(self) -> BackupStore:
        """This host's namespace of the backup target."""
        return self.backup.open_store(self.host())


def _describe(error: ErrorDetails) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "is not a known setting"
    elif error["type"] == "string_pattern_mismatch":
        msg = f"must match {error['ctx']['pattern']}"
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) or "secret" in field else f" (got {value!r})"
    return f"{field}: {msg}{shown}"


def load_settings(data: dict) -> UpgradeSettings:
    """Validate raw configuration; errors name every wrong field and what it accepts."""
    try:
        return UpgradeSettings.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigInvalid("invalid configuration:\n  " + "\n  ".join(lines),
                            "fix the fields above; `mender-upgrade config-schema` lists every field") from None


class MaintenanceWindow(BaseModel):
    """When downtime may happen. Empty start: the window opens when the run starts."""

    model_config = ConfigDict(extra="forbid")

    start: str | None = Field(None, description="window start, ISO 8601 (2026-11-28T01:00) or HH:MM today; empty: run start")
    duration_minutes: int = Field(120, gt=0, le=24 * 60, description="window length")
    timezone: str = Field("UTC", description="IANA time zone of `start`, e.g. Europe/Berlin")
    restore_margin_minutes: float = Field(10, ge=0, le=600, description="time kept free for a rollback restore")
    estimated_downtime_s: float = Field(120, gt=0, le=7200, description="expected downtime of one container cycle")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like UTC or Europe/Berlin") from None
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        from datetime import datetime, time
        if value in (None, ""):
            return None
        for parse in (datetime.fromisoformat, time.fromisoformat):
            try:
                parse(value)
                return value
            except ValueError:
                continue
        raise ValueError(f"{value!r} is neither an ISO date-time (2026-11-28T01:00) nor HH:MM")


class ApprovalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_approval: bool = Field(True, description="pause for a human after planning, before anything changes")
    approve_before_downtime: bool = Field(False, description="pause again right before the containers stop")
    timeout_minutes: float = Field(60, gt=0, le=7 * 24 * 60, description="an unanswered approval counts as rejected")
    require_signed: bool = Field(False, description="only an approval signed with an SSH key of the host's "
                                 "allowed_signers counts (`mender-upgrade approve`); unsigned ones count as rejected")
    allowed_signers: Path | None = Field(None, description="the host's ssh-keygen allowed_signers file "
                                         "(host file only: a run may not name its own)")


class StagingPolicy(BaseModel):
    """Staging before production: prove a target on the staging server, share the result."""

    model_config = ConfigDict(extra="forbid")

    require_completed_on: str | None = Field(
        None, pattern=HOST_REF_PATTERN,
        description="host id of the staging server; when set, this host upgrades only to a target version "
                    "whose upgrade run completed there (same Prefect server)")
    push_remote: str | None = Field(
        None, pattern=REMOTE_NAME_PATTERN, max_length=64,
        description="name of a git remote of the integration clone (e.g. company); when set, a completed "
                    "run pushes the production branch and its pre-upgrade/ tags there (never forced)")


UpgradeSettings.model_rebuild()
