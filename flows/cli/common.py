"""What several commands share: the consoles, the config file, the Prefect server, options."""

from __future__ import annotations

import os
import tomllib
from contextlib import contextmanager
from pathlib import Path

import typer
import yaml
from rich.console import Console

from mender_upgrade.tasks.redaction import parse_error_position
from mender_upgrade.tasks.settings import ConfigInvalid, UpgradeSettings, load_settings

console = Console()
PREFECT_HOME = Path(os.environ.get("MENDER_UPGRADE_HOME", Path.home() / ".mender-upgrade")) / "prefect"
LOCAL_PORT = 4200  # the local server's port on 127.0.0.1

# One name per setting across commands.
CONFIG = typer.Option(None, "--config", help="TOML or YAML settings file (see config-schema)")
INTEGRATION = typer.Option(None, "--integration", help="root of the operator's integration clone "
                                                       "(default: the config's integration_dir)")
TARGET = typer.Option(None, "--target", help="backup target s3://bucket/prefix or file:///folder "
                                             "(default: the config's backup.target)")
ENDPOINT = typer.Option(None, "--endpoint-url", help="S3 endpoint for non-AWS servers "
                                                     "(default: the config's backup.endpoint_url)")


def dim(message: str) -> None:
    """Progress lines from the steps: outside text, printed as is (no Rich markup)."""
    console.print(message, style="dim", markup=False, highlight=False)


def read_config(path: Path) -> UpgradeSettings:
    """A TOML or YAML file holding one UpgradeSettings; errors name the field."""
    if not path.is_file():
        raise ConfigInvalid(f"config file {path} does not exist", "pass --config with a TOML or YAML file")
    text = path.read_text()
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    try:
        data = tomllib.loads(text) if kind == "TOML" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        # The position only: the parser's own message quotes the line, which may hold a secret.
        raise ConfigInvalid(f"config file {path} is not valid {kind}: {parse_error_position(exc)}",
                            "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigInvalid(f"config file {path} must hold a mapping of settings", "see `mender-upgrade config-schema`")
    return load_settings(data)


def settings_from(config: Path | None, integration: Path | None = None, target: str | None = None,
                  endpoint: str | None = None) -> UpgradeSettings:
    """The config file's settings (or the defaults) with the command line's overrides."""
    settings = read_config(config) if config else UpgradeSettings()
    backup = settings.backup.model_dump() | {k: v for k, v in {"target": target, "endpoint_url": endpoint}.items() if v}
    return load_settings(settings.model_dump() | {"backup": backup} |
                         ({"integration_dir": integration} if integration else {}))


@contextmanager
def prefect_api():
    """The configured Prefect API, or a local server started for this machine (never an
    ephemeral one: approvals and history must outlive this process)."""
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, PREFECT_UI_URL,
                                  temporary_settings)

    from mender_upgrade.flows.runner import ensure_local_server, local_auth_string, require_safe_api
    if PREFECT_API_URL.value():
        # Setting.value() unwraps the settings' SecretStr: these are plain strings (or None).
        require_safe_api(PREFECT_API_URL.value(), PREFECT_API_AUTH_STRING.value(), PREFECT_API_KEY.value())
        yield PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return
    api = ensure_local_server(PREFECT_HOME, LOCAL_PORT, log=dim)
    ui = api.removesuffix("/api")
    # Runs, serve's runner and its flow-run processes inherit these settings: all use the auth string.
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_UI_URL: ui,
                                     PREFECT_API_AUTH_STRING: local_auth_string(PREFECT_HOME)}):
        yield ui
