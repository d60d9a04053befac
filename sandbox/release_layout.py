"""What the fixture's releases are made of: the backend services of every era, version helpers,
and the small block-style YAML writer the compose files and templates are written with."""

from __future__ import annotations

import re

_MONGO_URL = "mongodb://mender-mongo:27017"
_NATS_URL = "nats://mender-nats:4222"

# compose service -> (route/health name, extra environment); the backend services of every era
_BACKEND: dict[str, tuple[str, dict[str, str]]] = {
    "mender-workflows-server": ("workflows", {"WORKFLOWS_MONGO_URL": _MONGO_URL}),
    "mender-useradm": ("useradm", {"USERADM_MONGO": _MONGO_URL}),
    "mender-device-auth": (
        "devauth",
        {"DEVICEAUTH_MONGO": _MONGO_URL,
         "DEVICEAUTH_ORCHESTRATOR_ADDR": "http://mender-workflows-server:8080/"},
    ),
    "mender-inventory": (
        "inventory",
        {"INVENTORY_MONGO": _MONGO_URL,
         "INVENTORY_ORCHESTRATOR_ADDR": "http://mender-workflows-server:8080/"},
    ),
    "mender-deployments": (
        "deployments",
        {"DEPLOYMENTS_MONGO_URL": _MONGO_URL, "DEPLOYMENTS_MIDDLEWARE": "prod",
         "DEPLOYMENTS_INVENTORY_ADDR": "http://mender-inventory:8080/"},
    ),
}
_HEALTH_CHECKED = ("mender-deployments", "mender-device-auth", "mender-inventory", "mender-useradm")
_ENTERPRISE_IMAGES = {
    "mender-deployments": "deployments-enterprise",
    "mender-device-auth": "deviceauth-enterprise",
    "mender-inventory": "inventory-enterprise",
    "mender-useradm": "useradm-enterprise",
    "mender-workflows-server": "workflows-enterprise",
}

# path -> (content, executable)
Tree = dict[str, tuple[str, bool]]


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


_PLAIN_SCALAR = re.compile(r"[A-Za-z/.][A-Za-z0-9/._:+=-]*( [A-Za-z0-9/._:+=-]+)*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: object) -> str:
    """A YAML scalar: plain when unambiguous, else single-quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain = _PLAIN_SCALAR.fullmatch(text) and ": " not in text and not text.endswith(":")
    if plain and text.lower() not in _YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


def _yaml_lines(node: dict[str, object] | list[object], pad: str, step: str) -> list[str]:
    lines: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _yaml_lines(value, pad + step, step)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(value)}".rstrip())
        return lines
    for item in node:
        if isinstance(item, dict):
            first, *rest = _yaml_lines(item, pad + "  ", step)
            lines += [f"{pad}- {first.lstrip()}", *rest]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _yaml(doc: dict[str, object], header: str = "", indent: int = 4) -> str:
    """Block-style YAML of plain data (dicts, lists, str, int, bool, None), keys in order."""
    return header + "\n".join(_yaml_lines(doc, "", " " * indent)) + "\n"


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template
