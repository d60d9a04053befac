"""Carrying a release's template changes into the operator's prod.yml (and enterprise.yml).

A key whose template value changed is updated where the operator still has the old template's
value; otherwise it is reported for a decision. The template placeholders' values are read off
the operator's file, so "the operator still has the template's value" is decided after filling
them in. Edits go through tasks/yaml_edit.py, so comments and layout stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from mender_upgrade.tasks.storage_alias import PLACEHOLDERS, STORAGE_PLACEHOLDER, find_storage_alias
from mender_upgrade.tasks.yaml_edit import (MISSING, Missing, Path, checked_edit, delete_key, indent_step,
                                            insert_key, is_comment, key_span, load_document, next_sibling,
                                            plain, replace_value, split_lines, template_key_lines, value_at)


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
    current = plain(load_document(text))
    bound: dict[str, str] = {}
    alias = find_storage_alias(text)
    if alias:
        bound[STORAGE_PLACEHOLDER] = alias
    for template in templates:
        _bind(plain(load_document(template, "the template")), current, bound)
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
        if not is_comment(line):
            for placeholder, actual in bound.items():
                line = line.replace(placeholder, actual)
        out.append(line)
    return out


def _units(old: object, new: object, cur: object, path: Path = ()) -> Iterator[tuple[Path, object, object, object]]:
    """The keys to decide on: where the two templates differ, as deep as all three are mappings."""
    if old == new:
        return
    if isinstance(cur, dict) and isinstance(old, (dict, Missing)) and isinstance(new, (dict, Missing)):
        keys = list(new) if isinstance(new, dict) else []
        keys += [k for k in (old if isinstance(old, dict) else {}) if k not in keys]
        for key in keys:
            yield from _units(value_at(old, (key,)), value_at(new, (key,)), cur.get(key, MISSING), (*path, key))
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
    cur = plain(load_document(text))
    old, new = plain(load_document(old_template, "the old template")), plain(load_document(new_template, "the new template"))
    services = cur.get("services") if isinstance(cur, dict) else None
    changes = [TemplateChange(("services", name), value_at(old, ("services", name)), MISSING, services[name],
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
    new_data = plain(load_document(new_template, "the new template"))
    step = indent_step(load_document(text))
    if change.current is MISSING:
        lines = _fill_lines(template_key_lines(new_template, path, True, step) or [], bound)
        present = cast(dict, value_at(plain(load_document(text)), path[:-1]))  # a mapping: insert_key needs the parent
        return insert_key(text, path, change.new, lines, before=next_sibling(new_data, path, present))
    lines = _fill_lines(template_key_lines(new_template, path, False, step) or [], bound)
    return replace_value(text, path, change.new, lines)


def _refresh_comments(text: str, path: Path, old_template: str, new_template: str) -> str:
    """The new template's comments above the key at `path`, where prod.yml still has the old
    template's comments there (they would describe the old value)."""
    old_lines = template_key_lines(old_template, path, True) or []
    new_lines = template_key_lines(new_template, path, True) or []
    old_comments = [line.strip() for line in old_lines[:_lead_count(old_lines)]]
    new_comments = [line.strip() for line in new_lines[:_lead_count(new_lines)]]
    root = load_document(text)
    if old_comments == new_comments or value_at(plain(root), path) is MISSING:
        return text
    lines, cr = split_lines(text)
    span = key_span(lines, root, path)
    if [line.strip() for line in lines[span.lead:span.start]] != old_comments:
        return text
    lines[span.lead:span.start] = [" " * span.col + comment + cr for comment in new_comments]
    return checked_edit(lines, plain(root), f"the comments above `{'.'.join(path)}`")


def _lead_count(lines: list[str]) -> int:
    count = 0
    for line in lines:
        if not is_comment(line):
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
    old, new = plain(load_document(old_template, "the old template")), plain(load_document(new_template, "the new template"))
    current = plain(load_document(text))
    for path, _, new_value, value in _units(old, new, current):
        if value is not MISSING and value == _fill(new_value, bound):  # comments to match the value
            text = _refresh_comments(text, path, old_template, new_template)
    return CarryResult(text, changes)
