"""The operator's `production/config/prod.yml`: the 2.7 storage-alias patch and template carry-over.

Text in, text out. ruamel.yaml only parses and locates (line and column of every key); the
edits are made on the text lines, so every byte outside the edited keys stays as it was:
comments, quoting, key order, indentation. Every edit is checked: the edited text must parse to
exactly the data the edit intends, and nothing else may differ.

Template values name two placeholders the operator replaces: `set-my-alias-here.com` (the
storage DNS name) and `my-gateway-dns-name` (the gateway's). Their values are read off the
operator's file, so "the operator still has the template's value" is decided after filling
them in.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from tasks.errors import UpgradeError
from tasks.redaction import parse_error_position

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

Path = tuple[str, ...]


class ProdYamlError(UpgradeError):
    """prod.yml (or a template) cannot be parsed, or an edit would not do exactly what it should."""


class StorageAliasNotFound(UpgradeError):
    """Neither storage-proxy's alias nor DEPLOYMENTS_AWS_URI names the storage host."""


class AllowedHostsNotEditable(UpgradeError):
    """ALLOWED_HOSTS must name the storage host but its value is not in prod.yml to edit."""


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


MISSING = _Missing()


# --- parsing and locating -------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _load(text: str, what: str = "prod.yml") -> CommentedMap:
    """The parsed document (shared between calls: never modify it)."""
    try:
        root = YAML().load(text)
    except YAMLError as exc:
        raise ProdYamlError(f"{what} is not valid YAML: {parse_error_position(exc)}",
                            f"fix {what} by hand, then retry") from None
    if not isinstance(root, CommentedMap):
        raise ProdYamlError(f"{what} is not a YAML mapping", f"fix {what} by hand, then retry")
    return root


def _plain(node: object) -> object:
    """ruamel's round-trip nodes as plain dicts, lists and scalars."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, ScalarBoolean):
        return bool(node)
    for kind in (bool, int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def _get(data: object, path: Path) -> object:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return MISSING
        data = data[key]
    return data


def _real_key(mapping: CommentedMap, name: str) -> object:
    for key in mapping:
        if str(key) == name:
            return key
    raise KeyError(name)


def _node(root: CommentedMap, path: Path) -> object:
    node: object = root
    for name in path:
        node = node[_real_key(node, name)]  # type: ignore[index]
    return node


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


@dataclass(frozen=True)
class _Span:
    lead: int   # first line of the comments directly above the key
    start: int  # the key's line
    end: int    # one past the last line of its value
    col: int    # the key's column


def _span(lines: list[str], root: CommentedMap, path: Path) -> _Span:
    parent = _node(root, path[:-1])
    key = _real_key(parent, path[-1])  # type: ignore[arg-type]
    start, col = parent.lc.key(key)  # type: ignore[union-attr]
    value = parent[key]  # type: ignore[index]
    last = start
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if _is_blank(line):
            continue
        indentless_item = isinstance(value, CommentedSeq) and line.lstrip().startswith("-") and _indent(line) == col
        if _is_comment(line):
            if _indent(line) > col:
                last = i
            continue
        if _indent(line) <= col and not indentless_item:
            break
        last = i
    lead = start
    while lead > 0 and _is_comment(lines[lead - 1]) and _indent(lines[lead - 1]) == col:
        lead -= 1
    return _Span(lead, start, last + 1, col)


def _split(text: str) -> tuple[list[str], str]:
    return text.split("\n"), "\r" if "\r\n" in text else ""


def _join(lines: list[str]) -> str:
    return "\n".join(lines)


def _step(root: CommentedMap) -> int:
    """The file's indentation step (from `services:` to its first child), default 4."""
    services = root.get("services")
    if isinstance(services, CommentedMap) and services:
        first = next(iter(services))
        step = services.lc.key(first)[1] - root.lc.key(_real_key(root, "services"))[1]
        if step > 0:
            return step
    return 4


# --- rendering ------------------------------------------------------------------------------


def _scalar_text(value: object, style: str = "") -> str:
    """A YAML scalar; `style` is the quote character the old value used, if any."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if style == '"':
        return json.dumps(text)
    plain_ok = (style == "" and text == text.strip() and ": " not in text and " #" not in text
                and not text.endswith(":") and text[:1] not in "!&*{}[]|>'\"%@`#,"
                and _parses_to(text, text))
    return text if plain_ok else "'" + text.replace("'", "''") + "'"


def _parses_to(scalar: str, value: object) -> bool:
    """Both YAML 1.2 (ruamel) and 1.1 (PyYAML, what docker-compose v1 reads with) agree."""
    try:
        return (_plain(YAML().load(f"k: {scalar}\n")["k"]) == value
                and yaml.safe_load(f"k: {scalar}\n")["k"] == value)
    except (YAMLError, yaml.YAMLError):
        return False


def _render(key: str, value: object, col: int, step: int) -> list[str]:
    """Block-style lines for `key: value` at column `col`."""
    pad = " " * col
    head = f"{pad}{_scalar_text(key)}:"
    if isinstance(value, dict) and value:
        return [head] + [line for k, v in value.items() for line in _render(str(k), v, col + step, step)]
    if isinstance(value, list) and value:
        lines = [head]
        for item in value:
            if isinstance(item, list) and item:
                raise ProdYamlError(f"cannot rewrite `{key}`: it nests lists in flow style",
                                    f"write `{key}` in block style by hand, then retry")
            if isinstance(item, dict) and item:
                first, *rest = [line for k, v in item.items() for line in _render(str(k), v, 0, step)]
                lines += [f"{pad}{' ' * step}- {first}", *(f"{pad}{' ' * (step + 2)}{line}" for line in rest)]
            else:
                lines.append(f"{pad}{' ' * step}- {_scalar_text(item)}".rstrip())
        return lines
    if isinstance(value, (dict, list)):
        return [f"{head} {'{}' if isinstance(value, dict) else '[]'}"]
    return [f"{head} {_scalar_text(value)}".rstrip()]


def _shift(lines: list[str], col: int) -> list[str]:
    """Lines written from column 0, moved right to `col`."""
    return [(" " * col + line) if line.strip() else line for line in lines]


# --- checked edits --------------------------------------------------------------------------


def _set_in(data: dict, path: Path, value: object) -> dict:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _del_in(data: dict, path: Path) -> dict:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _checked(new_lines: list[str], expected: dict, what: str) -> str:
    """The edited text, if it parses to `expected`; else raise instead of writing a wrong file."""
    new_text = _join(new_lines)
    if _plain(_load(new_text)) != expected:
        raise ProdYamlError(f"editing {what} would not give the intended configuration",
                            "edit prod.yml by hand; this tool did not change it")
    return new_text


def _flow_prefix(root: CommentedMap, path: Path) -> Path | None:
    """The shortest prefix of `path` whose value is written in flow style (`{...}`/`[...]`)."""
    node: object = root
    for i, name in enumerate(path):
        if not isinstance(node, CommentedMap):
            return None
        node = node[_real_key(node, name)]
        if isinstance(node, (CommentedMap, CommentedSeq)) and node.fa.flow_style():
            return path[: i + 1]
    return None


def _scalar_end(line: str, col: int) -> int | None:
    """Where the single-line scalar starting at `col` ends, or None when it is not one."""
    first = line[col:col + 1]
    if first in ("'", '"'):
        i = col + 1
        while i < len(line):
            if first == "'" and line[i] == "'":
                if line[i + 1:i + 2] == "'":
                    i += 2
                    continue
                return i + 1
            if first == '"' and line[i] == "\\":
                i += 2
                continue
            if first == '"' and line[i] == '"':
                return i + 1
            i += 1
        return None
    if not first or first in "|>&*!{[":
        return None
    comment = line.find(" #", col)
    return len((line if comment < 0 else line[:comment]).rstrip())


def replace_value(text: str, path: Path, value: object, template_lines: list[str] | None = None) -> str:
    """Set the value at `path` (which exists). Single-line scalars are edited in place (quotes
    and trailing comment kept); other values replace the key's lines, taken from
    `template_lines` (the key and its value, written from column 0) when given."""
    root = _load(text)
    flow = _flow_prefix(root, path[:-1]) if len(path) > 1 else None
    expected = _set_in(_plain(root), path, value)
    if flow:
        return _rerender(text, root, flow, _get(expected, flow), f"`{'.'.join(path)}`")
    lines, cr = _split(text)
    span = _span(lines, root, path)
    parent = _node(root, path[:-1])
    key = _real_key(parent, path[-1])  # type: ignore[arg-type]
    old = parent[key]  # type: ignore[index]
    vline, vcol = parent.lc.value(key)  # type: ignore[union-attr]
    single = span.end == span.start + 1 and vline == span.start
    end = _scalar_end(lines[vline], vcol) if single and old is not None else None
    if end is not None and not isinstance(value, (dict, list)) and value is not None:
        style = lines[vline][vcol] if lines[vline][vcol] in "'\"" else ""
        lines[vline] = lines[vline][:vcol] + _scalar_text(value, style) + lines[vline][end:]
    else:
        new = (_shift(template_lines, span.col) if template_lines
               else _render(path[-1], value, span.col, _step(root)))
        lines[span.start:span.end] = [line + cr for line in new]
    return _checked(lines, expected, f"`{'.'.join(path)}`")


def _rerender(text: str, root: CommentedMap, path: Path, value: object, what: str) -> str:
    """Replace the key at `path` with a block-style rendering of `value` (for flow-style values)."""
    expected = _set_in(_plain(root), path, value)
    lines, cr = _split(text)
    span = _span(lines, root, path)
    lines[span.start:span.end] = [line + cr for line in _render(path[-1], value, span.col, _step(root))]
    return _checked(lines, expected, what)


def replace_item(text: str, path: Path, index: int, value: str) -> str:
    """Set item `index` of the sequence at `path` to the scalar `value`, in place."""
    root = _load(text)
    seq = _node(root, path)
    items = _plain(seq)
    items[index] = value  # type: ignore[index]
    expected = _set_in(_plain(root), path, items)
    flow = _flow_prefix(root, path)
    if flow:
        return _rerender(text, root, flow, _get(expected, flow), f"`{'.'.join(path)}`")
    lines, _ = _split(text)
    line, col = seq.lc.item(index)  # type: ignore[union-attr]
    end = _scalar_end(lines[line], col)
    if end is None:
        return replace_value(text, path, items)
    style = lines[line][col] if lines[line][col] in "'\"" else ""
    lines[line] = lines[line][:col] + _scalar_text(value, style) + lines[line][end:]
    return _checked(lines, expected, f"`{'.'.join(path)}`")


def append_item(text: str, path: Path, value: str, comment: str = "") -> str:
    """Append the scalar `value` to the (non-empty, block-style) sequence at `path`."""
    root = _load(text)
    seq = _node(root, path)
    items = [*_plain(seq), value]  # type: ignore[misc]
    if _flow_prefix(root, path) or not seq:
        return replace_value(text, path, items)
    lines, cr = _split(text)
    span = _span(lines, root, path)
    line, col = seq.lc.item(len(seq) - 1)  # type: ignore[union-attr,arg-type]
    dash = " " * (col - 2)
    new = ([f"{dash}{comment}"] if comment else []) + [f"{dash}- {_scalar_text(value)}"]
    lines[span.end:span.end] = [entry + cr for entry in new]
    return _checked(lines, _set_in(_plain(root), path, items), f"`{'.'.join(path)}`")


def insert_key(text: str, path: Path, value: object, template_lines: list[str] | None = None,
               before: str | None = None) -> str:
    """Add the absent key `path` to its (existing) parent mapping, before sibling `before` or
    after the last one. Lines come from `template_lines` (written from column 0, with their
    comments) when given."""
    root = _load(text)
    parent_path, name = path[:-1], path[-1]
    parent = _node(root, parent_path)
    expected = _set_in(_plain(root), path, value)
    flow = _flow_prefix(root, parent_path) if parent_path else None
    if flow or not isinstance(parent, CommentedMap) or not parent:
        target = flow or parent_path
        return _rerender(text, root, target, _get(expected, target), f"`{'.'.join(path)}`")
    lines, cr = _split(text)
    keys = [str(k) for k in parent]
    spans = [_span(lines, root, (*parent_path, k)) for k in keys]
    col = spans[0].col
    new = _shift(template_lines, col) if template_lines else _render(name, value, col, _step(root))
    # siblings separated by blank lines (like the services of prod.yml) get one around the new key
    separated = _is_blank(lines[spans[min(1, len(spans) - 1)].lead - 1])
    if before in keys:
        at = spans[keys.index(before)].lead
        new = new + ([""] if separated else [])
    else:
        at = spans[-1].end
        new = ([""] if separated else []) + new
    lines[at:at] = [line + cr for line in new]
    return _checked(lines, expected, f"`{'.'.join(path)}`")


def delete_key(text: str, path: Path) -> str:
    """Remove the key at `path` with its value and the comments directly above it; a mapping
    left empty goes too."""
    root = _load(text)
    while len(path) > 2 and len(_node(root, path[:-1])) == 1:  # type: ignore[arg-type]
        path = path[:-1]
    expected = _del_in(_plain(root), path)
    flow = _flow_prefix(root, path[:-1]) if len(path) > 1 else None
    if flow:
        return _rerender(text, root, flow, _get(expected, flow), f"`{'.'.join(path)}`")
    lines, _ = _split(text)
    span = _span(lines, root, path)
    del lines[span.lead:span.end]
    _collapse_blanks(lines, span.lead)
    return _checked(lines, expected, f"`{'.'.join(path)}`")


def _collapse_blanks(lines: list[str], at: int) -> None:
    """After removing lines before index `at`: one blank line between the neighbours, none
    before the end of the file."""
    if at == 0 or not _is_blank(lines[at - 1]):
        return
    if all(_is_blank(line) for line in lines[at:]):
        del lines[at - 1]  # it separated the removed key from the one before
        return
    while at < len(lines) - 1 and _is_blank(lines[at]):
        del lines[at]


# --- the storage alias (2.6 -> 2.7) ----------------------------------------------------------


def bare_host(value: str) -> str | None:
    """The DNS name in `value` (a bare name, `host:port` or a URL), or None if it has none."""
    text = value.strip()
    host = urlsplit(text).hostname if "://" in text else text.split("/")[0].rsplit(":", 1)[0]
    if not host or host in PLACEHOLDERS or not DNS_NAME.match(host):
        return None
    return host


def _env(service: object) -> dict[str, object]:
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
    services = _plain(_load(text)).get("services") or {}  # type: ignore[union-attr]
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


def _template_key_lines(template: str, path: Path, with_comments: bool, step: int | None = None) -> list[str] | None:
    """The template's lines for the key at `path` (and the comments above it), moved to column
    0 and, given the target file's indentation `step`, re-nested with that step."""
    root = _load(template, "the template")
    if _get(_plain(root), path) is MISSING:
        return None
    lines, _ = _split(template)
    span = _span(lines, root, path)
    own_step = _step(root)
    out = []
    for line in lines[span.lead if with_comments else span.start:span.end]:
        line = line.rstrip("\r")
        depth = max(_indent(line) - span.col, 0)
        if step and line.strip():
            depth = depth // own_step * step + depth % own_step
        out.append(" " * depth + line.lstrip(" ") if line.strip() else line)
    return out


def _next_sibling(template_data: dict, path: Path, present: dict) -> str | None:
    """The first key after `path[-1]` in the template's order that the operator's mapping has."""
    parent = _get(template_data, path[:-1])
    order = list(parent) if isinstance(parent, dict) else []
    later = order[order.index(path[-1]) + 1:] if path[-1] in order else []
    return next((k for k in later if k in present), None)


def _alias_lines(key: str, value: object, alias: str, step: int) -> list[str]:
    """`key: value` rendered, with a comment above the alias saying what it is."""
    lines = _render(key, value, 0, step)
    at = next(i for i, line in enumerate(lines) if line.strip() == f"- {_scalar_text(alias)}")
    lines.insert(at, " " * _indent(lines[at]) + ALIAS_COMMENT)
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
    root = _load(text)
    data = _plain(root)
    path = ("services", GATEWAY, "networks")
    networks = _get(data, path)
    mender = networks.get("mender") if isinstance(networks, dict) else None
    aliases = mender.get("aliases") if isinstance(mender, dict) else None
    if isinstance(aliases, list) and aliases:
        return _add_alias(text, (*path, "mender", "aliases"), aliases, alias)
    if isinstance(mender, dict):
        target, value = (*path, "mender", "aliases"), [alias]
    elif isinstance(networks, dict):
        target, value = (*path, "mender"), {"aliases": [alias]}
    elif isinstance(networks, list):
        names = [str(n) for n in networks] + ([] if "mender" in map(str, networks) else ["mender"])
        target, value = path, {n: ({"aliases": [alias]} if n == "mender" else None) for n in names}
    else:
        target, value = path, {"mender": {"aliases": [alias]}}
    lines = _alias_lines(target[-1], value, alias, _step(root))
    if _get(data, target) is MISSING:
        before = _next_sibling(template_data, target, _get(data, target[:-1]))  # type: ignore[arg-type]
        return insert_key(text, target, value, lines, before=before)
    return replace_value(text, target, value, lines)


def _drop_storage_port(text: str, alias: str) -> str:
    """DEPLOYMENTS_AWS_URI without `:9000` when it names the storage host (2.7 serves 443 only)."""
    env = _service(_plain(_load(text))["services"], DEPLOYMENTS).get("environment")  # type: ignore[index,arg-type]
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
    services = _plain(_load(text)).get("services")  # type: ignore[union-attr]
    if not isinstance(services, dict) or not isinstance(services.get(GATEWAY), dict):
        raise ProdYamlError("prod.yml has no mender-api-gateway override",
                            "copy the mender-api-gateway section of the new prod.yml.template into prod.yml")
    template_data = _plain(_load(template, "the template"))
    template_gateway = _get(template_data, ("services", GATEWAY))
    template_gateway = template_gateway if isinstance(template_gateway, dict) else {}
    volumes = _gateway_volumes(services, [str(m) for m in template_gateway.get("volumes") or []])

    if STORAGE_PROXY in services:
        text = delete_key(text, ("services", STORAGE_PROXY))
    text = _patch_gateway_networks(text, alias, template_data)
    text = _drop_storage_port(text, alias)
    gateway = _plain(_load(text))["services"][GATEWAY]  # type: ignore[index]
    if "command" not in gateway and "command" in template_gateway:
        path = ("services", GATEWAY, "command")
        lines = _template_key_lines(template, path, True, _step(_load(text)))
        text = insert_key(text, path, template_gateway["command"], lines,
                          before=_next_sibling(template_data, path, gateway))
    path = ("services", GATEWAY, "volumes")
    if volumes and gateway.get("volumes", MISSING) != volumes:
        if "volumes" in gateway:
            text = replace_value(text, path, volumes)
        else:
            text = insert_key(text, path, volumes, before=_next_sibling(template_data, path, gateway))
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
    gateway = _service(_plain(_load(text)).get("services") or {}, GATEWAY)  # type: ignore[union-attr]
    env, path = gateway.get("environment"), ("services", GATEWAY, "environment")
    list_form = isinstance(env, list)
    if isinstance(env, dict) and env.get(ALLOWED_HOSTS) is not None:
        value, index = str(env[ALLOWED_HOSTS]), None
    elif list_form:
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


# --- carrying template changes ---------------------------------------------------------------


@dataclass(frozen=True)
class TemplateChange:
    """One key whose template value changed between two releases, and what happens to it.

    status: `carried` (prod.yml still had the old template value: now the new one),
    `customized` (the operator changed it: decide in the approval), `needs-value` (the new
    value has a placeholder nobody filled), `missing-file` (the new value mounts a file that
    does not exist), `removed-service` (the new release has no such service: override removed).
    """

    path: Path
    old: object
    new: object
    current: object
    status: str
    note: str = ""

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def to_dict(self) -> dict[str, object]:
        def show(v: object) -> object:
            return None if v is MISSING else v
        return {"key": self.key, "old_template": show(self.old), "new_template": show(self.new),
                "current": show(self.current), "status": self.status, "note": self.note}


@dataclass
class CarryResult:
    text: str
    changes: list[TemplateChange] = field(default_factory=list)

    @property
    def carried(self) -> list[TemplateChange]:
        return [c for c in self.changes if c.status in ("carried", "removed-service")]

    @property
    def drift(self) -> list[TemplateChange]:
        """What the operator must decide: everything not carried."""
        return [c for c in self.changes if c.status not in ("carried", "removed-service")]


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _pattern(template_value: str) -> re.Pattern[str]:
    parts = re.split("(" + "|".join(map(re.escape, PLACEHOLDERS)) + ")", template_value)
    regex = "".join(f"(?P<p{PLACEHOLDERS.index(p)}>[^,/:\\s]+)" if p in PLACEHOLDERS else re.escape(p)
                    for p in parts)
    return re.compile(f"^{regex}$")


def _bind(template: object, current: object, bound: dict[str, str]) -> None:
    """Learn placeholder values by matching template values against the operator's."""
    if isinstance(template, dict) and isinstance(current, dict):
        for key in template.keys() & current.keys():
            _bind(template[key], current[key], bound)
    elif isinstance(template, list) and isinstance(current, list) and len(template) == len(current):
        for t, c in zip(template, current, strict=True):
            _bind(t, c, bound)
    elif isinstance(template, str) and isinstance(current, str) and any(p in template for p in PLACEHOLDERS):
        match = _pattern(template).match(current)
        for name, value in (match.groupdict() if match else {}).items():
            placeholder = PLACEHOLDERS[int(name[1:])]
            if value not in PLACEHOLDERS and value != placeholder:
                bound.setdefault(placeholder, value)


def placeholder_values(text: str, *templates: str) -> dict[str, str]:
    """The operator's values of the template placeholders (storage alias, gateway name)."""
    current = _plain(_load(text))
    bound: dict[str, str] = {}
    alias = find_storage_alias(text)
    if alias:
        bound[STORAGE_PLACEHOLDER] = alias
    for template in templates:
        _bind(_plain(_load(template, "the template")), current, bound)
    return bound


def _fill(value: object, bound: dict[str, str]) -> object:
    if value is MISSING:
        return value
    if isinstance(value, dict):
        return {k: _fill(v, bound) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, bound) for v in value]
    if isinstance(value, str):
        for placeholder, actual in bound.items():
            value = value.replace(placeholder, actual)
    return value


def _fill_lines(lines: list[str], bound: dict[str, str]) -> list[str]:
    out = []
    for line in lines:
        if not _is_comment(line):
            for placeholder, actual in bound.items():
                line = line.replace(placeholder, actual)
        out.append(line)
    return out


def _units(old: object, new: object, cur: object, path: Path = ()) -> Iterator[tuple[Path, object, object, object]]:
    """The keys to decide on: where the two templates differ, as deep as all three are mappings."""
    if old == new:
        return
    if isinstance(cur, dict) and isinstance(old, (dict, _Missing)) and isinstance(new, (dict, _Missing)):
        keys = list(new) if isinstance(new, dict) else []
        keys += [k for k in (old if isinstance(old, dict) else {}) if k not in keys]
        for key in keys:
            yield from _units(_get(old, (key,)), _get(new, (key,)), cur.get(key, MISSING), (*path, key))
        return
    yield path, old, new, cur


def _mount_sources(value: object) -> list[str]:
    return [s.split(":")[0] for s in _strings(value) if s.startswith("./") and ":" in s]


def _classify(path: Path, old: object, new: object, cur: object, bound: dict[str, str],
              path_exists: Callable[[str], bool] | None) -> TemplateChange | None:
    old_f, new_f = _fill(old, bound), _fill(new, bound)
    if cur == new_f:
        return None
    if cur != old_f:
        note = ("the new template no longer sets it" if new is MISSING else
                "you removed it; the new template sets it" if cur is MISSING else
                "you changed it from the template's value")
        return TemplateChange(path, old, new, cur, "customized", note)
    unfilled = sorted({p for s in _strings(new_f) for p in PLACEHOLDERS if p in s})
    if unfilled:
        return TemplateChange(path, old, new, cur, "needs-value", f"set {', '.join(unfilled)} by hand")
    missing = [s for s in _mount_sources(new_f) if path_exists is not None and not path_exists(s)]
    if missing:
        return TemplateChange(path, old, new, cur, "missing-file",
                              f"the new template mounts {', '.join(missing)}, which does not exist")
    note = ("added by the new template" if cur is MISSING else "dropped by the new template" if new is MISSING
            else "had the old template's value: takes the new one")
    return TemplateChange(path, old, new_f, cur, "carried", note)


def template_drift(text: str, old_template: str, new_template: str, *, removed_services: tuple[str, ...] = (),
                   path_exists: Callable[[str], bool] | None = None) -> list[TemplateChange]:
    """Keys of prod.yml whose template counterpart changed or disappeared between the two
    templates, each with what carrying over would do; overrides of `removed_services` first."""
    cur = _plain(_load(text))
    old, new = _plain(_load(old_template, "the old template")), _plain(_load(new_template, "the new template"))
    services = cur.get("services") if isinstance(cur, dict) else None
    changes = [TemplateChange(("services", name), _get(old, ("services", name)), MISSING, services[name],
                              "removed-service", "the new release's compose files do not define it")
               for name in removed_services if isinstance(services, dict) and name in services]
    bound = placeholder_values(text, old_template, new_template)
    for path, o, n, c in _units(old, new, cur):
        if path[:1] == ("services",) and len(path) > 1 and path[1] in removed_services:
            continue
        change = _classify(path, o, n, c, bound, path_exists)
        if change:
            changes.append(change)
    return changes


def _apply(text: str, change: TemplateChange, new_template: str, bound: dict[str, str]) -> str:
    path = change.path
    if change.status == "removed-service" or change.new is MISSING:
        return delete_key(text, path)
    new_data = _plain(_load(new_template, "the new template"))
    step = _step(_load(text))
    if change.current is MISSING:
        lines = _fill_lines(_template_key_lines(new_template, path, True, step) or [], bound)
        present = _get(_plain(_load(text)), path[:-1])
        return insert_key(text, path, change.new, lines, before=_next_sibling(new_data, path, present))  # type: ignore[arg-type]
    lines = _fill_lines(_template_key_lines(new_template, path, False, step) or [], bound)
    return replace_value(text, path, change.new, lines)


def _refresh_comments(text: str, path: Path, old_template: str, new_template: str) -> str:
    """The new template's comments above the key at `path`, where prod.yml still has the old
    template's comments there (they would describe the old value)."""
    old_lines = _template_key_lines(old_template, path, True) or []
    new_lines = _template_key_lines(new_template, path, True) or []
    old_comments = [line.strip() for line in old_lines[:_lead_count(old_lines)]]
    new_comments = [line.strip() for line in new_lines[:_lead_count(new_lines)]]
    root = _load(text)
    if old_comments == new_comments or _get(_plain(root), path) is MISSING:
        return text
    lines, cr = _split(text)
    span = _span(lines, root, path)
    if [line.strip() for line in lines[span.lead:span.start]] != old_comments:
        return text
    lines[span.lead:span.start] = [" " * span.col + comment + cr for comment in new_comments]
    return _checked(lines, _plain(root), f"the comments above `{'.'.join(path)}`")


def _lead_count(lines: list[str]) -> int:
    count = 0
    for line in lines:
        if not _is_comment(line):
            break
        count += 1
    return count


def carry_template_changes(text: str, old_template: str, new_template: str, *,
                           removed_services: tuple[str, ...] = (),
                           path_exists: Callable[[str], bool] | None = None) -> CarryResult:
    """Bring the new template's changes into prod.yml (a three-way merge of old template, new
    template and prod.yml): overrides of `removed_services` go, keys still holding the old
    template's value get the new one, customized keys are left and reported as drift."""
    changes = template_drift(text, old_template, new_template, removed_services=removed_services,
                             path_exists=path_exists)
    bound = placeholder_values(text, old_template, new_template)
    # adds and sets before deletes, so no mapping is emptied and removed before it gets a key
    order = {"removed-service": 2}
    for change in sorted((c for c in changes if c.status in ("carried", "removed-service")),
                         key=lambda c: order.get(c.status, 1 if c.new is MISSING else 0)):
        text = _apply(text, change, new_template, bound)
    old, new = _plain(_load(old_template, "the old template")), _plain(_load(new_template, "the new template"))
    current = _plain(_load(text))
    for path, _, new_value, value in _units(old, new, current):
        if value is not MISSING and value == _fill(new_value, bound):  # comments to match the value
            text = _refresh_comments(text, path, old_template, new_template)
    return CarryResult(text, changes)
