"""Comment-keeping edits of a YAML file's text (no Mender knowledge).

Text in, text out. ruamel.yaml only parses and locates (line and column of every key); the
edits are made on the text lines, so every byte outside the edited keys stays as it was:
comments, quoting, key order, indentation. Every edit is checked: the edited text must parse to
exactly the data the edit intends, and nothing else may differ.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, cast, overload

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.redaction import parse_error_position

Path = tuple[str, ...]


class ProdYamlError(UpgradeError):
    """prod.yml (or a template) cannot be parsed, or an edit would not do exactly what it should."""


class Missing:
    def __repr__(self) -> str:
        return "<absent>"


MISSING = Missing()


# --- parsing and locating -------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def load_document(text: str, what: str = "prod.yml") -> CommentedMap:
    """The parsed document (shared between calls: never modify it)."""
    try:
        root = YAML().load(text)
    except YAMLError as exc:
        raise ProdYamlError(f"{what} is not valid YAML: {parse_error_position(exc)}",
                            f"fix {what} by hand, then retry") from None
    if not isinstance(root, CommentedMap):
        raise ProdYamlError(f"{what} is not a YAML mapping", f"fix {what} by hand, then retry")
    return root


@overload
def plain(node: dict) -> dict[str, Any]: ...
@overload
def plain(node: list) -> list[Any]: ...
@overload
def plain(node: object) -> object: ...
def plain(node: object) -> object:
    """ruamel's round-trip nodes as plain dicts, lists and scalars (parsed YAML: Any inside,
    like yaml.safe_load's result)."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, ScalarBoolean):
        return bool(node)
    for kind in (bool, int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


def value_at(data: object, path: Path) -> object:
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
        mapping = cast(CommentedMap, node)  # every name but the last one's names a mapping
        node = mapping[_real_key(mapping, name)]
    return node


def _mapping(root: CommentedMap, path: Path) -> CommentedMap:
    """The mapping at `path`: callers pass the path of a key's parent, or of a mapping they checked."""
    return cast(CommentedMap, _node(root, path))


def _sequence(root: CommentedMap, path: Path) -> CommentedSeq:
    """The sequence at `path` (callers' paths name sequences)."""
    return cast(CommentedSeq, _node(root, path))


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_blank(line: str) -> bool:
    return not line.strip()


def is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


@dataclass(frozen=True)
class _Span:
    lead: int   # first line of the comments directly above the key
    start: int  # the key's line
    end: int    # one past the last line of its value
    col: int    # the key's column


def key_span(lines: list[str], root: CommentedMap, path: Path) -> _Span:
    parent = _mapping(root, path[:-1])
    key = _real_key(parent, path[-1])
    start, col = parent.lc.key(key)
    value = parent[key]
    last = start
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if _is_blank(line):
            continue
        indentless_item = isinstance(value, CommentedSeq) and line.lstrip().startswith("-") and indent_of(line) == col
        if is_comment(line):
            if indent_of(line) > col:
                last = i
            continue
        if indent_of(line) <= col and not indentless_item:
            break
        last = i
    lead = start
    while lead > 0 and is_comment(lines[lead - 1]) and indent_of(lines[lead - 1]) == col:
        lead -= 1
    return _Span(lead, start, last + 1, col)


def split_lines(text: str) -> tuple[list[str], str]:
    return text.split("\n"), "\r" if "\r\n" in text else ""


def _join(lines: list[str]) -> str:
    return "\n".join(lines)


def indent_step(root: CommentedMap) -> int:
    """The file's indentation step (from `services:` to its first child), default 4."""
    services = root.get("services")
    if isinstance(services, CommentedMap) and services:
        first = next(iter(services))
        step = services.lc.key(first)[1] - root.lc.key(_real_key(root, "services"))[1]
        if step > 0:
            return step
    return 4


# --- rendering ------------------------------------------------------------------------------


def scalar_text(value: object, style: str = "") -> str:
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
        return (plain(YAML().load(f"k: {scalar}\n")["k"]) == value
                and yaml.safe_load(f"k: {scalar}\n")["k"] == value)
    except (YAMLError, yaml.YAMLError):
        return False


def render_key(key: str, value: object, col: int, step: int) -> list[str]:
    """Block-style lines for `key: value` at column `col`."""
    pad = " " * col
    head = f"{pad}{scalar_text(key)}:"
    if isinstance(value, dict) and value:
        return [head] + [line for k, v in value.items() for line in render_key(str(k), v, col + step, step)]
    if isinstance(value, list) and value:
        lines = [head]
        for item in value:
            if isinstance(item, list) and item:
                raise ProdYamlError(f"cannot rewrite `{key}`: it nests lists in flow style",
                                    f"write `{key}` in block style by hand, then retry")
            if isinstance(item, dict) and item:
                first, *rest = [line for k, v in item.items() for line in render_key(str(k), v, 0, step)]
                lines += [f"{pad}{' ' * step}- {first}", *(f"{pad}{' ' * (step + 2)}{line}" for line in rest)]
            else:
                lines.append(f"{pad}{' ' * step}- {scalar_text(item)}".rstrip())
        return lines
    if isinstance(value, (dict, list)):
        return [f"{head} {'{}' if isinstance(value, dict) else '[]'}"]
    return [f"{head} {scalar_text(value)}".rstrip()]


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


def checked_edit(new_lines: list[str], expected: dict, what: str) -> str:
    """The edited text, if it parses to `expected`; else raise instead of writing a wrong file."""
    new_text = _join(new_lines)
    if plain(load_document(new_text)) != expected:
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
    root = load_document(text)
    flow = _flow_prefix(root, path[:-1]) if len(path) > 1 else None
    expected = _set_in(plain(root), path, value)
    if flow:
        return _rerender(text, root, flow, value_at(expected, flow), f"`{'.'.join(path)}`")
    lines, cr = split_lines(text)
    span = key_span(lines, root, path)
    parent = _mapping(root, path[:-1])
    key = _real_key(parent, path[-1])
    old = parent[key]
    vline, vcol = parent.lc.value(key)
    single = span.end == span.start + 1 and vline == span.start
    end = _scalar_end(lines[vline], vcol) if single and old is not None else None
    if end is not None and not isinstance(value, (dict, list)) and value is not None:
        style = lines[vline][vcol] if lines[vline][vcol] in "'\"" else ""
        lines[vline] = lines[vline][:vcol] + scalar_text(value, style) + lines[vline][end:]
    else:
        new = (_shift(template_lines, span.col) if template_lines
               else render_key(path[-1], value, span.col, indent_step(root)))
        lines[span.start:span.end] = [line + cr for line in new]
    return checked_edit(lines, expected, f"`{'.'.join(path)}`")


def _rerender(text: str, root: CommentedMap, path: Path, value: object, what: str) -> str:
    """Replace the key at `path` with a block-style rendering of `value` (for flow-style values)."""
    expected = _set_in(plain(root), path, value)
    lines, cr = split_lines(text)
    span = key_span(lines, root, path)
    lines[span.start:span.end] = [line + cr for line in render_key(path[-1], value, span.col, indent_step(root))]
    return checked_edit(lines, expected, what)


def replace_item(text: str, path: Path, index: int, value: str) -> str:
    """Set item `index` of the sequence at `path` to the scalar `value`, in place."""
    root = load_document(text)
    seq = _sequence(root, path)
    items = plain(seq)
    items[index] = value
    expected = _set_in(plain(root), path, items)
    flow = _flow_prefix(root, path)
    if flow:
        return _rerender(text, root, flow, value_at(expected, flow), f"`{'.'.join(path)}`")
    lines, _ = split_lines(text)
    line, col = seq.lc.item(index)
    end = _scalar_end(lines[line], col)
    if end is None:
        return replace_value(text, path, items)
    style = lines[line][col] if lines[line][col] in "'\"" else ""
    lines[line] = lines[line][:col] + scalar_text(value, style) + lines[line][end:]
    return checked_edit(lines, expected, f"`{'.'.join(path)}`")


def append_item(text: str, path: Path, value: str, comment: str = "") -> str:
    """Append the scalar `value` to the (non-empty, block-style) sequence at `path`."""
    root = load_document(text)
    seq = _sequence(root, path)
    items = [*plain(seq), value]
    if _flow_prefix(root, path) or not seq:
        return replace_value(text, path, items)
    lines, cr = split_lines(text)
    span = key_span(lines, root, path)
    line, col = seq.lc.item(len(seq) - 1)
    dash = " " * (col - 2)
    new = ([f"{dash}{comment}"] if comment else []) + [f"{dash}- {scalar_text(value)}"]
    lines[span.end:span.end] = [entry + cr for entry in new]
    return checked_edit(lines, _set_in(plain(root), path, items), f"`{'.'.join(path)}`")


def insert_key(text: str, path: Path, value: object, template_lines: list[str] | None = None,
               before: str | None = None) -> str:
    """Add the absent key `path` to its (existing) parent mapping, before sibling `before` or
    after the last one. Lines come from `template_lines` (written from column 0, with their
    comments) when given."""
    root = load_document(text)
    parent_path, name = path[:-1], path[-1]
    parent = _node(root, parent_path)
    expected = _set_in(plain(root), path, value)
    flow = _flow_prefix(root, parent_path) if parent_path else None
    if flow or not isinstance(parent, CommentedMap) or not parent:
        target = flow or parent_path
        return _rerender(text, root, target, value_at(expected, target), f"`{'.'.join(path)}`")
    lines, cr = split_lines(text)
    keys = [str(k) for k in parent]
    spans = [key_span(lines, root, (*parent_path, k)) for k in keys]
    col = spans[0].col
    new = _shift(template_lines, col) if template_lines else render_key(name, value, col, indent_step(root))
    # siblings separated by blank lines (like the services of prod.yml) get one around the new key
    separated = _is_blank(lines[spans[min(1, len(spans) - 1)].lead - 1])
    if before in keys:
        at = spans[keys.index(before)].lead
        new = new + ([""] if separated else [])
    else:
        at = spans[-1].end
        new = ([""] if separated else []) + new
    lines[at:at] = [line + cr for line in new]
    return checked_edit(lines, expected, f"`{'.'.join(path)}`")


def delete_key(text: str, path: Path) -> str:
    """Remove the key at `path` with its value and the comments directly above it; a mapping
    left empty goes too."""
    root = load_document(text)
    while len(path) > 2 and len(_mapping(root, path[:-1])) == 1:
        path = path[:-1]
    expected = _del_in(plain(root), path)
    flow = _flow_prefix(root, path[:-1]) if len(path) > 1 else None
    if flow:
        return _rerender(text, root, flow, value_at(expected, flow), f"`{'.'.join(path)}`")
    lines, _ = split_lines(text)
    span = key_span(lines, root, path)
    del lines[span.lead:span.end]
    _collapse_blanks(lines, span.lead)
    return checked_edit(lines, expected, f"`{'.'.join(path)}`")


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


def template_key_lines(template: str, path: Path, with_comments: bool, step: int | None = None) -> list[str] | None:
    """The template's lines for the key at `path` (and the comments above it), moved to column
    0 and, given the target file's indentation `step`, re-nested with that step."""
    root = load_document(template, "the template")
    if value_at(plain(root), path) is MISSING:
        return None
    lines, _ = split_lines(template)
    span = key_span(lines, root, path)
    own_step = indent_step(root)
    out = []
    for line in lines[span.lead if with_comments else span.start:span.end]:
        line = line.rstrip("\r")
        depth = max(indent_of(line) - span.col, 0)
        if step and line.strip():
            depth = depth // own_step * step + depth % own_step
        out.append(" " * depth + line.lstrip(" ") if line.strip() else line)
    return out


def next_sibling(template_data: dict, path: Path, present: dict) -> str | None:
    """The first key after `path[-1]` in the template's order that the operator's mapping has."""
    parent = value_at(template_data, path[:-1])
    order = list(parent) if isinstance(parent, dict) else []
    later = order[order.index(path[-1]) + 1:] if path[-1] in order else []
    return next((k for k in later if k in present), None)
