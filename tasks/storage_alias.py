"""The operator's prod.yml after 2.6 -> 2.7: the storage alias moves from storage-proxy to the
gateway (with its certificates and ports), and from 3.2 ALLOWED_HOSTS must name it.

Edits go through tasks/yaml_edit.py, so everything outside the edited keys stays as it was.
Template values name two placeholders the operator replaces: `set-my-alias-here.com` (the
storage DNS name) and `my-gateway-dns-name` (the gateway's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.yaml_edit import (MISSING, Path, ProdYamlError, append_item, delete_key, indent_of,
                                            indent_step, insert_key, load_document, next_sibling, plain,
                                            render_key, replace_item, replace_value, scalar_text,
                                            template_key_lines, value_at)

STORAGE_PLACEHOLDER = "set-my-alias-here.com"
GATEWAY_PLACEHOLDER = "my-gateway-dns-name"
PLACEHOLDERS = (STORAGE_PLACEHOLDER, GATEWAY_PLACEHOLDER)
GATEWAY = "mender-api-gateway"
STORAGE_PROXY = "storage-proxy"
DEPLOYMENTS = "mender-deployments"
DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# 2.7 moved TLS from nginx to Traefik: where each certificate was mounted, and where it goes now.
NGINX_TO_TRAEFIK = {
    (GATEWAY, "/var/www/mendersoftware/cert/cert.crt"): "/certs/cert.crt",
    (GATEWAY, "/var/www/mendersoftware/cert/private.key"): "/certs/private.key",
    (STORAGE_PROXY, "/var/www/storage-proxy/cert/cert.crt"): "/certs/s3.docker.mender.io.crt",
    (STORAGE_PROXY, "/var/www/storage-proxy/cert/private.key"): "/certs/s3.docker.mender.io.key",
}
ALIAS_COMMENT = "# storage DNS name devices use (was storage-proxy's alias): bare name, no scheme/port"


class StorageAliasNotFound(UpgradeError):
    """Neither storage-proxy's alias nor DEPLOYMENTS_AWS_URI names the storage host."""


class AllowedHostsNotEditable(UpgradeError):
    """ALLOWED_HOSTS must name the storage host but its value is not in prod.yml to edit."""


def bare_host(value: str) -> str | None:
    """The DNS name in `value` (a bare name, `host:port` or a URL), or None if it has none."""
    text = value.strip()
    host = urlsplit(text).hostname if "://" in text else text.split("/")[0].rsplit(":", 1)[0]
    if not host or host in PLACEHOLDERS or not DNS_NAME.match(host):
        return None
    return host


def _env(service: object) -> Mapping[str, object]:
    """A service's environment as a mapping (compose also allows a `KEY=value` list)."""
    env = service.get("environment") if isinstance(service, dict) else None
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env if "=" in str(item))
    return env if isinstance(env, dict) else {}


def _aliases(service: object) -> list[str]:
    networks = service.get("networks") if isinstance(service, dict) else None
    mender = networks.get("mender") if isinstance(networks, dict) else None
    aliases = mender.get("aliases") if isinstance(mender, dict) else None
    return [str(a) for a in aliases] if isinstance(aliases, list) else []


def find_storage_alias(text: str) -> str | None:
    """The storage DNS name devices use: storage-proxy's network alias, else the gateway's (2.7+
    layout), else the host of DEPLOYMENTS_AWS_EXTERNAL_URI / DEPLOYMENTS_AWS_URI."""
    services = plain(load_document(text)).get("services") or {}
    candidates = [*_aliases(services.get(STORAGE_PROXY)), *_aliases(services.get(GATEWAY))]
    env = _env(services.get(DEPLOYMENTS))
    candidates += [str(env[k]) for k in ("DEPLOYMENTS_AWS_EXTERNAL_URI", "DEPLOYMENTS_AWS_URI") if env.get(k)]
    for candidate in candidates:
        host = bare_host(candidate)
        if host and host != "minio":
            return host
    return None


def _service(services: dict, name: str) -> dict:
    service = services.get(name)
    return service if isinstance(service, dict) else {}


def _mount_target(mount: str) -> str:
    parts = mount.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _mount_source(mount: str) -> str:
    return mount.split(":")[0]


def _gateway_volumes(services: dict, template_volumes: list[str]) -> list[str] | None:
    """The gateway's mounts for Traefik: the template's, with the operator's certificate files
    where the nginx gateway and storage-proxy mounted them; other own mounts kept. None when
    the operator uses compose's long mount syntax (left alone, shown as drift)."""
    current = _service(services, GATEWAY).get("volumes") or []
    proxy = _service(services, STORAGE_PROXY).get("volumes") or []
    if not all(isinstance(m, str) for m in [*current, *proxy]):
        return None
    sources = {}
    for (service, nginx_target), traefik_target in NGINX_TO_TRAEFIK.items():
        for mount in current if service == GATEWAY else proxy:
            if _mount_target(mount) == nginx_target:
                sources[traefik_target] = _mount_source(mount)
    by_target = {_mount_target(m): m for m in current}
    wanted = []
    for mount in template_volumes:
        target = _mount_target(mount)
        if target in by_target:
            wanted.append(by_target[target])
        elif target in sources:
            wanted.append(sources[target] + mount[len(_mount_source(mount)):])
        else:
            wanted.append(mount)
    template_targets = {_mount_target(m) for m in template_volumes}
    nginx_targets = {t for (s, t) in NGINX_TO_TRAEFIK if s == GATEWAY}
    wanted += [m for m in current if _mount_target(m) not in template_targets | nginx_targets]
    return wanted


def _alias_lines(key: str, value: object, alias: str, step: int) -> list[str]:
    """`key: value` rendered, with a comment above the alias saying what it is."""
    lines = render_key(key, value, 0, step)
    at = next(i for i, line in enumerate(lines) if line.strip() == f"- {scalar_text(alias)}")
    lines.insert(at, " " * indent_of(lines[at]) + ALIAS_COMMENT)
    return lines


def _add_alias(text: str, path: Path, aliases: list[object], alias: str) -> str:
    for index, item in enumerate(aliases):
        if str(item) != alias and (str(item) in PLACEHOLDERS or bare_host(str(item)) == alias):
            # a placeholder, or the alias written as a URL (as the 2.7 template comment said)
            text = replace_item(text, path, index, alias)
            aliases[index] = alias
    if alias not in map(str, aliases):
        text = append_item(text, path, alias, ALIAS_COMMENT)
    return text


def _patch_gateway_networks(text: str, alias: str, template_data: dict) -> str:
    """The gateway on network `mender` with `alias`, turning the `- mender` list form into the
    mapping form and keeping any other networks and aliases."""
    root = load_document(text)
    data = plain(root)
    path = ("services", GATEWAY, "networks")
    networks = value_at(data, path)
    mender = networks.get("mender") if isinstance(networks, dict) else None
    aliases = mender.get("aliases") if isinstance(mender, dict) else None
    if isinstance(aliases, list) and aliases:
        return _add_alias(text, (*path, "mender", "aliases"), aliases, alias)
    target: Path
    value: object
    if isinstance(mender, dict):
        target, value = (*path, "mender", "aliases"), [alias]
    elif isinstance(networks, dict):
        target, value = (*path, "mender"), {"aliases": [alias]}
    elif isinstance(networks, list):
        names = [str(n) for n in networks] + ([] if "mender" in map(str, networks) else ["mender"])
        target, value = path, {n: ({"aliases": [alias]} if n == "mender" else None) for n in names}
    else:
        target, value = path, {"mender": {"aliases": [alias]}}
    lines = _alias_lines(target[-1], value, alias, indent_step(root))
    if value_at(data, target) is MISSING:
        parent = cast(dict, value_at(data, target[:-1]))  # a mapping: the gateway, its networks or their `mender`
        before = next_sibling(template_data, target, parent)
        return insert_key(text, target, value, lines, before=before)
    return replace_value(text, target, value, lines)


def _drop_storage_port(text: str, alias: str) -> str:
    """DEPLOYMENTS_AWS_URI without `:9000` when it names the storage host (2.7 serves 443 only)."""
    env = _service(plain(load_document(text))["services"], DEPLOYMENTS).get("environment")
    path = ("services", DEPLOYMENTS, "environment")
    if isinstance(env, dict) and isinstance(env.get("DEPLOYMENTS_AWS_URI"), str):
        fixed = _without_port(env["DEPLOYMENTS_AWS_URI"], alias)
        return replace_value(text, (*path, "DEPLOYMENTS_AWS_URI"), fixed) if fixed else text
    if isinstance(env, list):
        for index, item in enumerate(env):
            name, _, uri = str(item).partition("=")
            fixed = _without_port(uri, alias) if name == "DEPLOYMENTS_AWS_URI" else None
            if fixed:
                text = replace_item(text, path, index, f"{name}={fixed}")
    return text


def _without_port(uri: str, alias: str) -> str | None:
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.hostname != alias or port != 9000:
        return None
    netloc = parts.netloc.rsplit(":", 1)[0]
    return parts._replace(netloc=netloc).geturl()


def patch_storage_alias(text: str, template: str, alias: str | None = None) -> str:
    """prod.yml for 2.7's Traefik gateway, which also serves the artifact storage.

    `template` is the new release's prod.yml.template. The storage DNS name (`alias`, default:
    found in `text`) becomes a bare-name alias of mender-api-gateway on the `mender` network;
    the storage-proxy override goes (2.7 has no such service); DEPLOYMENTS_AWS_URI loses `:9000`
    when it names that host (only 443 is served); the gateway gets the template's `command`
    when it has none, and the template's certificate mounts, fed by the certificates the nginx
    gateway and storage-proxy used. Running it again changes nothing.
    """
    alias = alias or find_storage_alias(text)
    if alias is None:
        raise StorageAliasNotFound(
            "cannot tell the storage DNS name: prod.yml has no storage-proxy alias and no "
            "DEPLOYMENTS_AWS_URI host", "add the name devices use for the artifact storage to prod.yml as "
            "storage-proxy's alias (networks: mender: aliases:), commit, and retry")
    if bare_host(alias) != alias:
        raise StorageAliasNotFound(f"{alias!r} is not a bare DNS name",
                                   "give the host name only, without scheme or port (e.g. s3.example.com)")
    services = plain(load_document(text)).get("services")
    if not isinstance(services, dict) or not isinstance(services.get(GATEWAY), dict):
        raise ProdYamlError("prod.yml has no mender-api-gateway override",
                            "copy the mender-api-gateway section of the new prod.yml.template into prod.yml")
    template_data = plain(load_document(template, "the template"))
    template_gateway = value_at(template_data, ("services", GATEWAY))
    template_gateway = template_gateway if isinstance(template_gateway, dict) else {}
    volumes = _gateway_volumes(services, [str(m) for m in template_gateway.get("volumes") or []])

    if STORAGE_PROXY in services:
        text = delete_key(text, ("services", STORAGE_PROXY))
    text = _patch_gateway_networks(text, alias, template_data)
    text = _drop_storage_port(text, alias)
    gateway = plain(load_document(text))["services"][GATEWAY]
    if "command" not in gateway and "command" in template_gateway:
        path = ("services", GATEWAY, "command")
        lines = template_key_lines(template, path, True, indent_step(load_document(text)))
        text = insert_key(text, path, template_gateway["command"], lines,
                          before=next_sibling(template_data, path, gateway))
    path = ("services", GATEWAY, "volumes")
    if volumes and gateway.get("volumes", MISSING) != volumes:
        if "volumes" in gateway:
            text = replace_value(text, path, volumes)
        else:
            text = insert_key(text, path, volumes, before=next_sibling(template_data, path, gateway))
    return text


# --- ALLOWED_HOSTS (3.2+) ----------------------------------------------------------------------

ALLOWED_HOSTS = "ALLOWED_HOSTS"


def _host_list(value: str) -> list[str]:
    return [host.strip().lower() for host in value.split(",") if host.strip()]


def _allowed_hosts_line(value: str, alias: str, list_form: bool) -> str:
    hosts = ",".join([*(h.strip() for h in value.split(",") if h.strip()), alias]) if value else f"<gateway name>,{alias}"
    return f"- {ALLOWED_HOSTS}={hosts}" if list_form else f'{ALLOWED_HOSTS}: "{hosts}"'


def _refuse_allowed_hosts(why: str, value: str, alias: str, list_form: bool) -> AllowedHostsNotEditable:
    return AllowedHostsNotEditable(
        f"from 3.2 the gateway answers only the host names in ALLOWED_HOSTS, and devices reach the "
        f"artifact storage as {alias}, which it does not list; {why}",
        f"add {alias} to ALLOWED_HOSTS under services: {GATEWAY}: environment: in prod.yml, e.g. "
        f"`{_allowed_hosts_line(value, alias, list_form)}`, commit, and retry")


def allow_storage_host(text: str, alias: str) -> str:
    """prod.yml with storage host `alias` in mender-api-gateway's ALLOWED_HOSTS.

    From 3.2 the Traefik configuration turns ALLOWED_HOSTS (a comma-separated list) into a
    router that rejects every other Host: devices fetching artifacts from a storage name other
    than the gateway's would fail. An unset ALLOWED_HOSTS checks nothing, so nothing is added.
    The map form (`ALLOWED_HOSTS: "a,b"`, quotes kept) and the list form (`- ALLOWED_HOSTS=a,b`)
    are edited in place; a value that is not in prod.yml (`${VAR}`, an env_file) is refused
    with the exact line to add. Running it again changes nothing."""
    gateway = _service(plain(load_document(text)).get("services") or {}, GATEWAY)
    env, path = gateway.get("environment"), ("services", GATEWAY, "environment")
    list_form = isinstance(env, list)
    if isinstance(env, dict) and env.get(ALLOWED_HOSTS) is not None:
        value, index = str(env[ALLOWED_HOSTS]), None
    elif isinstance(env, list):  # list_form, spelt out for the type checker
        found = [(i, str(item).partition("=")[2]) for i, item in enumerate(env)
                 if str(item).partition("=")[0].strip() == ALLOWED_HOSTS and "=" in str(item)]
        if not found:
            if gateway.get("env_file"):
                raise _refuse_allowed_hosts("its env_file may set it, and prod.yml does not", "", alias, True)
            return text
        index, value = found[-1]
    else:
        if gateway.get("env_file"):
            raise _refuse_allowed_hosts("its env_file may set it, and prod.yml does not", "", alias, False)
        return text
    if alias.lower() in _host_list(value):
        return text
    if "$" in value:
        raise _refuse_allowed_hosts(f"its value {value!r} comes from the environment (compose interpolation)",
                                    "", alias, list_form)
    hosts = value.rstrip(", ") + "," + alias
    if index is None:
        return replace_value(text, (*path, ALLOWED_HOSTS), hosts)
    return replace_item(text, path, index, f"{ALLOWED_HOSTS}={hosts}")
