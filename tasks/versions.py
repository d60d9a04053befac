"""Mender versions and the upgrade path between them (pure: no git, no Docker).

Rules (Mender docs, fact sheet section 9): patch upgrades within a minor; one minor at a time,
each intermediate hop at the latest patch of its minor; the last minor of a major to the next
major; the documented 3.3/3.4 -> 3.6 shortcut. The docker-compose production line ends at 3.7.x.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import pymongo
from pymongo.common import MIN_SUPPORTED_SERVER_VERSION, MIN_SUPPORTED_WIRE_VERSION

from mender_upgrade.tasks.errors import UpgradeError

STABLE_TAG = re.compile(r"^(\d+)\.(\d+)\.(\d+)\Z")  # \Z: `$` would accept a trailing newline
COMPOSE_LINE_END = (3, 8)  # 3.8.x pulls moving `main` images; 4.x is Helm only
SHORTCUTS = {(3, 3): (3, 6), (3, 4): (3, 6)}  # documented, and it skips 3.5's OpenSearch


class PlanRefused(UpgradeError):
    """The requested upgrade is not allowed; the hint gives the allowed path."""


class Version(NamedTuple):
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = STABLE_TAG.match(text)
        if not m:
            raise ValueError(f"{text!r} is not a stable Mender version (X.Y.Z)")
        return cls(*map(int, m.groups()))

    @property
    def line(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def stable_versions(tags: list[str]) -> list[Version]:
    """Stable release tags, sorted by version (betas, -buildN, saas-* and the like dropped)."""
    return sorted({Version.parse(t) for t in tags if STABLE_TAG.match(t)})


def mongo_major(v: Version) -> str:
    """The mongo image major the release's compose files use (fact sheet section 6)."""
    if v.line <= (2, 2):
        return "3.4"
    if v.line <= (2, 4):
        return "3.6"
    if v.line <= (3, 6):
        return "4.4"
    if v.line == (3, 7):
        return "5.0"
    return "6.0"


def _major_minor(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def driver_reaches_mongo_of(v: Version) -> bool:
    """Whether the installed pymongo can talk to the MongoDB release `v` runs (pymongo 4.20
    needs MongoDB >= 4.4, wire version 9; Mender <= 2.4 runs 3.4/3.6)."""
    return _major_minor(mongo_major(v)) >= _major_minor(MIN_SUPPORTED_SERVER_VERSION)


@dataclass
class UpgradePlan:
    current: str
    target: str | None
    hops: list[str] = field(default_factory=list)
    enterprise: bool = False
    alias_patch: bool = False
    mongo_major_change: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    refused: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _next_line(line: tuple[int, int], lines: list[tuple[int, int]],
               goal: tuple[int, int]) -> tuple[int, int] | None:
    shortcut = SHORTCUTS.get(line)
    if shortcut in lines and shortcut <= goal:
        return shortcut
    later = [v for v in lines if v > line]
    if not later:
        return None
    same_major = [v for v in later if v[0] == line[0]]
    if same_major:
        return same_major[0]
    return later[0] if later[0][0] == line[0] + 1 else None


def allowed_hops(current: Version, versions: list[Version], target: Version) -> list[Version] | None:
    """The hops from `current` to `target`, or None when the rules give no path."""
    latest: dict[tuple[int, int], Version] = {}
    for v in versions:
        latest[v.line] = max(latest.get(v.line, v), v)
    lines = sorted(latest)
    hops: list[Version] = []
    line = current.line
    while line != target.line:
        nxt = _next_line(line, lines, target.line)
        if nxt is None or nxt > target.line:
            return None
        line = nxt
        hops.append(latest[line])
    if hops:
        hops[-1] = target
    elif target > current:
        hops = [target]
    return hops


def _refuse(plan: UpgradePlan, reason: str, hint: str) -> UpgradePlan:
    plan.refused = f"{reason}; {hint}"
    return plan


def plan_upgrade_path(current: str, tags: list[str], target: str | None = None,
                      enterprise: bool = False) -> UpgradePlan:
    """Plan the hops from `current` to `target` (default: the newest allowed release)."""
    versions = stable_versions(tags)
    cur = Version.parse(current)
    compose_line = [v for v in versions if v.line < COMPOSE_LINE_END]
    newest = max(compose_line) if compose_line else cur
    plan = UpgradePlan(current=current, target=target, enterprise=enterprise)
    if cur.line >= COMPOSE_LINE_END:
        return _refuse(plan, f"the running {cur} is already past the docker-compose production line",
                       "4.x is installed with Helm (mendersoftware/mender-server); this tool does not apply")
    if not driver_reaches_mongo_of(cur):
        first = next((v for v in versions if v > cur and driver_reaches_mongo_of(v)), None)
        return _refuse(plan, f"Mender {cur} runs MongoDB {mongo_major(cur)}, which this tool's MongoDB driver "
                       f"(pymongo {pymongo.version}) cannot talk to: it needs MongoDB >= {MIN_SUPPORTED_SERVER_VERSION} "
                       f"(wire version >= {MIN_SUPPORTED_WIRE_VERSION}), so no backup could be made",
                       f"upgrade by hand to {first.major}.{first.minor}.x or later first ({first} is the first release "
                       "here on a MongoDB the tool reaches), following Mender's documented upgrade procedure "
                       "(backup with mongodump, `git merge` of the release tag, `./run up -d`), then run "
                       "mender-upgrade from there" if first else "no release in this repository runs a MongoDB "
                       "the tool reaches")
    if target is None:
        tgt = newest
        plan.target = str(tgt)
    else:
        if not STABLE_TAG.match(target):
            return _refuse(plan, f"target {target!r} is not a stable release tag (X.Y.Z)",
                           f"known releases up to {newest}")
        tgt = Version.parse(target)
        if tgt not in versions:
            near = [str(v) for v in versions if v.line == tgt.line] or [str(v) for v in versions[-5:]]
            return _refuse(plan, f"target {target} is not a tag of this repository",
                           f"known releases near it: {', '.join(near)}")
        if tgt.line >= COMPOSE_LINE_END:
            return _refuse(plan, f"target {target} is past the docker-compose production line "
                           "(3.8.x pulls moving images; 4.x needs Helm)", f"the newest supported target is {newest}")
    if tgt < cur:
        return _refuse(plan, f"{tgt} is older than the running {cur}: downgrades are not supported",
                       "restore a backup taken on the older release instead")
    if tgt == cur:
        plan.warnings.append(f"already at {cur}: nothing to do")
        return plan
    hops = allowed_hops(cur, versions, tgt)
    if hops is None:
        reachable = allowed_hops(cur, versions, newest) or []
        return _refuse(plan, f"no allowed upgrade path from {cur} to {tgt}",
                       f"allowed path from {cur}: {' -> '.join(map(str, reachable)) or 'none'}")
    plan.hops = [str(h) for h in hops]
    plan.alias_patch = cur.line < (2, 7) <= tgt.line
    before, after = mongo_major(cur), mongo_major(tgt)
    if before != after:
        plan.mongo_major_change = [before, after]
        if float(after) >= 5.0:
            plan.warnings.append(f"mongo {after} needs a CPU with AVX")
    if plan.alias_patch:
        plan.warnings.append("2.7 removes storage-proxy: its DNS name becomes an alias of the gateway; "
                             "devices with a mender client older than 1.7.1 need the old storage proxy")
    if any(Version.parse(h).line == (3, 5) for h in plan.hops):
        plan.warnings.append("3.5 adds OpenSearch (vm.max_map_count=262144, >= 6% free disk)")
    return plan
