"""What changed in a volume between two listings (pure): the delta archive's content.

A listing is GNU find's view of every entry under the volume root (`find -printf` of
`LISTING_FORMAT`): type, size, mtime, ctime, mode, owner, inode and link target per path. Two
listings, one taken before the hot pre-copy archive and one in the quiet period, give the
delta: every path that is new or whose entry differs (written to the delta archive) and every
path that is gone or changed its type (removed before the delta is applied). ctime and inode
are compared too: a tool that sets mtime back (`touch -d`, `tar x`) or a file replaced by
rename still changes them, so nothing written after the first listing is missed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from mender_upgrade.tasks.volumes import TarDigest, UnsafeArchive

# Fields NUL-separated (no path can hold a NUL); the path last. %P: path below the root.
LISTING_FORMAT = r"%y\0%s\0%T@\0%C@\0%m\0%U\0%G\0%i\0%l\0%P\0"
FIELDS = 10


@dataclass(frozen=True)
class Entry:
    kind: str    # find's %y: f file, d folder, l symlink, ...
    size: int
    mtime: str   # seconds with nanoseconds, as find prints them: compared, never parsed
    ctime: str
    mode: str    # octal permission bits
    uid: int
    gid: int
    inode: int
    link: str    # symlink target ("" otherwise)


Listing = dict[str, Entry]


class ListingUnreadable(UnsafeArchive):
    """A volume listing is not what `find -printf LISTING_FORMAT` writes."""


def parse_listing(data: bytes) -> Listing:
    """path -> entry of find's NUL-separated output (names as the OS decodes them)."""
    fields = data.split(b"\0")
    if fields[-1] != b"" or (len(fields) - 1) % FIELDS:
        raise ListingUnreadable(f"volume listing of {len(data)} bytes does not hold whole entries of {FIELDS} fields",
                                "this is a bug or the image's find is not GNU find; nothing was changed")
    out: Listing = {}
    for i in range(0, len(fields) - 1, FIELDS):
        kind, size, mtime, ctime, mode, uid, gid, inode, link, path = (os.fsdecode(f) for f in fields[i:i + FIELDS])
        try:
            out[path] = Entry(kind, int(size), mtime, ctime, mode, int(uid), int(gid), int(inode), link)
        except ValueError:
            raise ListingUnreadable(f"volume listing entry {path!r} has a non-numeric size, owner or inode",
                                    "this is a bug or the image's find is not GNU find; nothing was changed") from None
    return out


@dataclass(frozen=True)
class VolumeDelta:
    changed: list[str]  # new or changed paths below the volume root, parents before children
    removed: list[str]  # gone (or changed type): removed before `changed` is applied; no path below another

    @property
    def empty(self) -> bool:
        return not self.changed and not self.removed


def _below_any(path: str, roots: set[str]) -> bool:
    parts = PurePosixPath(path).parts
    return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))


def compare_listings(before: Listing, after: Listing) -> VolumeDelta:
    """The delta from `before` to `after`. A path whose type changed is both removed and
    changed: extracting a folder over a file (or the reverse) would fail or mix the two."""
    retyped = {p for p in before.keys() & after.keys() if before[p].kind != after[p].kind}
    gone = (before.keys() - after.keys()) | retyped
    removed = sorted(p for p in gone if not _below_any(p, gone))
    changed = sorted(p for p, entry in after.items() if before.get(p) != entry)
    return VolumeDelta(changed, removed)


def merge_digest(base: TarDigest, delta: TarDigest, volume: str, removed: list[str]) -> TarDigest:
    """The digest a volume has after restoring base, the removals, then the delta."""
    gone = {f"{volume}/{p}" for p in removed}
    out = TarDigest({path: entry for path, entry in base.files.items()
                     if path not in gone and not _below_any(path, gone)})
    out.files.update(delta.files)
    return out
