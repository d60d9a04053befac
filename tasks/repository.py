"""The operator's integration clone: preconditions, versions, hop merges, review material, and
the prod.yml update that goes with each hop.

The merge of a hop is a three-way merge whose base is the current release tag, not what
`git merge` would pick: upstream's release branches fork from master and bump the same lines,
so the docs' plain `git merge <tag>` conflicts in upstream files the operator never touched.
Here the result starts as the new tag's tree, the operator's own changes since the current tag
are merged into it file by file, and the commit records HEAD and the new tag as parents.
Nothing in the work tree, index or HEAD moves until the whole merge is known to be clean.

Every version and branch string is validated before it reaches git; git runs with argument
lists only (GitPython), never through a shell.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypedDict, Unpack

import git
import yaml
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from mender_upgrade.tasks.containers import run_compose
from mender_upgrade.tasks.errors import TransientError, UpgradeError
from mender_upgrade.tasks.redaction import scrub
from mender_upgrade.tasks.storage_alias import allow_storage_host, find_storage_alias, patch_storage_alias
from mender_upgrade.tasks.template_carry import TemplateChange, carry_template_changes, template_drift
from mender_upgrade.tasks.versions import STABLE_TAG, UpgradePlan, Version, plan_upgrade_path, stable_versions
from mender_upgrade.tasks.yaml_edit import MISSING

PRODUCTION_BRANCH = "production"
PROD_YML = "production/config/prod.yml"
ENTERPRISE_YML = "production/config/enterprise.yml"
TEMPLATES = {PROD_YML: "production/config/prod.yml.template",
             ENTERPRISE_YML: "production/config/enterprise.yml.template"}
REVIEW_PATHS = (":(glob)production/config/*.template", ":(glob)docker-compose*.yml", ":(glob)config/**")
# The tool's markers (state before a hop, a failed attempt) live outside refs/tags/: production/run
# exports `git describe --tags --abbrev=0` as INTEGRATION_VERSION, and a marker tag nearer to
# HEAD than the release tag would name itself instead of the release that runs.
MARKER_NAMESPACE = "refs/mender-upgrade/"
PRE_UPGRADE_PREFIX = "pre-upgrade/"
FAILED_PREFIX = "failed-upgrade/"
BRANCH_NAME = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]{1,100}(?<!\.lock)(?<![/.])$")
# A configured remote's name only (no URL, no path): the operator's git config decides where it
# points and with which credentials. First character never '-' (an option) or '.'; no '..'.
REMOTE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
REMOTE_NAME = re.compile(REMOTE_NAME_PATTERN)
FETCH_TIMEOUT_S = 120
ALIAS_PATCH_LINE = (2, 7)  # the release line whose gateway replaces storage-proxy
ALLOWED_HOSTS_LINE = (3, 2)  # from here Traefik rejects any Host not in ALLOWED_HOSTS


class InvalidRef(UpgradeError):
    """A version or branch string that is not safe or not well-formed; git never sees it."""


class GitFailed(UpgradeError):
    """A git command failed; the message has its error output."""


class NotAnIntegrationClone(UpgradeError):
    """The directory is not the root of a mendersoftware/integration clone."""


class NotOnProductionBranch(UpgradeError):
    """HEAD is detached or on another branch."""


class DirtyWorkTree(UpgradeError):
    """Uncommitted or untracked changes would be mixed into the upgrade."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        shown = "\n  ".join(paths[:20]) + ("\n  ..." if len(paths) > 20 else "")
        super().__init__(f"the clone has {len(paths)} uncommitted or untracked path(s):\n  {shown}",
                         "commit them on the production branch (or remove them), then retry")


class ProdYmlNotTracked(UpgradeError):
    """production/config/prod.yml is missing or not committed."""


class OriginUnreachable(TransientError):
    """`git fetch --tags origin` failed."""


class RemoteMissing(UpgradeError):
    """The clone has no remote of the configured name."""


class RemoteUnreachable(TransientError):
    """`git push` could not reach the remote (network, credentials, wrong URL)."""


class PushRejected(UpgradeError):
    """The remote refused a ref (non-fast-forward, a tag of that name with other content, a hook)."""


class NoReleaseTag(UpgradeError):
    """No stable release tag is reachable from HEAD."""


class MergeConflict(UpgradeError):
    """The operator's own edits collide with upstream changes; nothing was changed."""

    def __init__(self, tag: str, base: str, causes: dict[str, str]) -> None:
        self.tag, self.base, self.causes = tag, base, causes
        self.paths = sorted(causes)
        listed = "\n  ".join(f"{path}: {causes[path]}" for path in self.paths)
        super().__init__(
            f"merging {tag} conflicts in {len(self.paths)} file(s) changed on this branch since {base}:\n  {listed}",
            "nothing was changed (HEAD, index and files are as before). Likely cause: a tracked upstream "
            "file edited locally. Move such edits into production/config/prod.yml as overrides, or undo "
            f"them (`git checkout {base} -- <file>` and commit), then retry")


class HopFailed(UpgradeError):
    """A hop merged but its configuration check failed; the hop was rolled back."""


# --- validation and plumbing -----------------------------------------------------------------


def validate_version(text: str) -> str:
    """`text` if it is a stable release version (X.Y.Z); else raise InvalidRef."""
    if not isinstance(text, str) or not STABLE_TAG.match(text):
        raise InvalidRef(f"{text!r} is not a release version (X.Y.Z)", "give a stable tag such as 2.7.2")
    return text


def validate_branch(name: str) -> str:
    """`name` if it is a plain branch name (no option-like or ref-syntax tricks); else raise."""
    if not isinstance(name, str) or not BRANCH_NAME.match(name):
        raise InvalidRef(f"{name!r} is not an acceptable branch name",
                         "use letters, digits, '.', '_', '-' and '/' (e.g. production)")
    return name


def validate_remote(name: str) -> str:
    """`name` if it can only be the name of a configured remote (not a URL or an option); else raise."""
    if not isinstance(name, str) or len(name) > 64 or not REMOTE_NAME.fullmatch(name):
        raise InvalidRef(f"{name!r} is not an acceptable remote name",
                         "give the name of a remote of the clone (see `git remote -v`), e.g. company")
    return name


def _tag_ref(version: str) -> str:
    return f"refs/tags/{validate_version(version)}"


def _release(repo: git.Repo, version: str) -> git.Commit:
    """The commit of release tag `version`."""
    try:
        return repo.commit(_tag_ref(version))
    except (git.BadName, ValueError):
        raise GitFailed(f"release tag {version} is not in this clone",
                        "fetch the tags: git fetch --tags origin") from None


def _git(repo: git.Repo, *args: str, env: dict[str, str] | None = None, stdin: Path | None = None,
         timeout: float | None = None) -> str:
    """Run `git args...` in the clone; git's failures become GitFailed naming the command."""
    try:
        if stdin is None:
            return repo.git.execute(["git", *args], env=env, kill_after_timeout=timeout)
        with stdin.open("rb") as handle:
            return repo.git.execute(["git", *args], env=env, istream=handle, kill_after_timeout=timeout)
    except GitCommandError as exc:
        detail = scrub((exc.stderr or exc.stdout or "").strip().removeprefix("stderr: ").strip("'\n "))
        raise GitFailed(f"`git {' '.join(args[:3])}` failed: {detail}",
                        f"run it by hand in {repo.working_tree_dir} to see why") from None


# --- the clone -------------------------------------------------------------------------------


def marker_ref(name: str) -> str:
    """The full ref of marker `name` (`pre-upgrade/...` or `failed-upgrade/...`)."""
    return MARKER_NAMESPACE + name


def markers(repo: git.Repo, prefix: str) -> dict[str, str]:
    """Marker name -> the commit it marks, for the markers whose name starts with `prefix`."""
    out = _git(repo, "for-each-ref", "--format=%(refname) %(*objectname) %(objectname)",
               marker_ref(prefix).rstrip("/"))
    found = {}
    for line in out.splitlines():
        ref, *shas = line.split()
        found[ref.removeprefix(MARKER_NAMESPACE)] = shas[0]  # the peeled commit of an annotated marker
    return found


def create_marker(repo: git.Repo, name: str, commit: str, message: str) -> str:
    """An annotated tag object for `commit` under refs/mender-upgrade/ (never refs/tags/);
    returns the full ref. Refuses to overwrite an existing marker."""
    ident = _git(repo, "var", "GIT_COMMITTER_IDENT")
    body = f"object {commit}\ntype commit\ntag {name}\ntagger {ident}\n\n{message}\n"
    with tempfile.TemporaryDirectory(prefix="mender-upgrade-marker-") as tmp:
        (Path(tmp) / "tag").write_text(body)
        tag_object = _git(repo, "mktag", stdin=Path(tmp) / "tag")
    ref = marker_ref(name)
    _git(repo, "update-ref", "-m", "mender-upgrade marker", ref, tag_object, "")
    return ref


def delete_marker(repo: git.Repo, name: str) -> None:
    _git(repo, "update-ref", "-d", marker_ref(name))


def migrate_marker_tags(repo: git.Repo) -> list[str]:
    """Move `pre-upgrade/*` and `failed-upgrade/*` tags that earlier versions of this tool made
    from refs/tags/ to refs/mender-upgrade/ (same tag objects). Idempotent; a tag whose name is
    already taken there by another object stays where it is. Returns the names moved."""
    moved = []
    for prefix in (PRE_UPGRADE_PREFIX, FAILED_PREFIX):
        listing = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", f"refs/tags/{prefix}".rstrip("/"))
        for line in listing.splitlines():
            sha, ref = line.split(" ", 1)
            name = ref.removeprefix("refs/tags/")
            existing = _git(repo, "for-each-ref", "--format=%(objectname)", marker_ref(name))
            if existing and existing != sha:
                continue
            if not existing:
                _git(repo, "update-ref", "-m", "mender-upgrade: marker out of refs/tags", marker_ref(name), sha, "")
            _git(repo, "update-ref", "-d", ref, sha)
            moved.append(name)
    return moved


# The flows, the deployments' form and the config file call it integration_dir (the CLI's plan
# and repo-update also take --integration for it).
SET_INTEGRATION_DIR = "set settings.integration_dir (integration_dir in the config or the deployment's form) to"


def open_integration(path: Path) -> git.Repo:
    """The git clone at `path`, which must be the root of an integration work tree."""
    root = Path(path).resolve()
    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise NotAnIntegrationClone(f"{root} is not a git clone",
                                    f"{SET_INTEGRATION_DIR} the root of your mendersoftware/integration clone "
                                    "on this host") from None
    if repo.bare or Path(repo.working_tree_dir or "").resolve() != root:
        raise NotAnIntegrationClone(f"{root} is not the root of a git work tree",
                                    f"{SET_INTEGRATION_DIR} the clone's top folder "
                                    f"({repo.working_tree_dir or 'a non-bare clone'})")
    if not (root / "production").is_dir():
        raise NotAnIntegrationClone(f"{root} has no production/ folder",
                                    "Mender 2.2-3.8 clones keep production/run there; 4.x is not a compose install")
    return repo


def _status(repo: git.Repo) -> list[str]:
    """Paths with uncommitted or untracked changes."""
    entries = iter(_git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=normal").split("\0"))
    paths = []
    for entry in entries:
        if len(entry) > 3:
            paths.append(entry[3:])
            if entry[0] in "RC":  # a rename's source path follows as its own entry
                next(entries, None)
    return paths


def check_preconditions(repo: git.Repo, branch: str = PRODUCTION_BRANCH) -> None:
    """The clone is on `branch`, has a committed production/config/prod.yml, and is clean."""
    validate_branch(branch)
    if repo.head.is_detached:
        raise NotOnProductionBranch("HEAD is detached (not on a branch)",
                                    f"check out your production branch: git checkout {branch}")
    if repo.active_branch.name != branch:
        raise NotOnProductionBranch(f"the clone is on branch {repo.active_branch.name!r}, not {branch!r}",
                                    f"git checkout {branch}, or pass --branch {repo.active_branch.name}")
    root = Path(repo.working_tree_dir or ".")
    if not (root / PROD_YML).is_file():
        old_layout = (root / "production" / "prod.yml").is_file()
        raise ProdYmlNotTracked(
            f"{PROD_YML} does not exist" + (" (this clone has the <=2.1 production/prod.yml layout)" if old_layout else ""),
            "move to the 2.2 layout by hand first (delete the copied production/run, move prod.yml to "
            "production/config/prod.yml, commit)" if old_layout else
            "copy production/config/prod.yml.template to production/config/prod.yml, fill it in, commit it")
    if not _git(repo, "ls-files", "--", PROD_YML):
        raise ProdYmlNotTracked(f"{PROD_YML} is not committed", f"git add {PROD_YML} && git commit")
    dirty = _status(repo)
    if dirty:
        raise DirtyWorkTree(dirty)


def fetch_tags(repo: git.Repo) -> None:
    """`git fetch --tags origin`, so every release tag is known."""
    if "origin" not in [r.name for r in repo.remotes]:
        raise OriginUnreachable("the clone has no remote 'origin'",
                                "git remote add origin https://github.com/mendersoftware/integration.git")
    try:
        _git(repo, "fetch", "--tags", "--quiet", "origin", timeout=FETCH_TIMEOUT_S)
    except GitFailed as exc:
        raise OriginUnreachable(f"origin ({scrub(repo.remotes.origin.url)}) did not answer `git fetch --tags`: "
                                f"{exc.message}", "check the network and the remote URL, then retry") from None


def all_tags(repo: git.Repo) -> list[str]:
    return _git(repo, "tag", "--list").split()


def current_version(repo: git.Repo) -> str:
    """The newest stable release tag reachable from HEAD (betas, -buildN, saas-* ignored)."""
    versions = stable_versions(_git(repo, "tag", "--merged", "HEAD").split())
    if not versions:
        raise NoReleaseTag("no stable release tag (X.Y.Z) is reachable from HEAD",
                           "fetch the tags (git fetch --tags origin); the production branch must start at a release tag")
    return str(versions[-1])


def is_enterprise(repo: git.Repo) -> bool:
    """Enterprise iff production/config/enterprise.yml exists (what `production/run` checks)."""
    return (Path(repo.working_tree_dir or ".") / ENTERPRISE_YML).is_file()


def _tree(repo: git.Repo, rev: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, object id) of every file in `rev`."""
    out = _git(repo, "ls-tree", "-r", "-z", "--full-tree", rev)
    entries = {}
    for entry in filter(None, out.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, _, sha = meta.split()
        entries[path] = (mode, sha)
    return entries


def local_edits(repo: git.Repo, base: str) -> list[str]:
    """Upstream files (present at tag `base`) that the branch changed or deleted since."""
    before, now = _tree(repo, _tag_ref(base)), _tree(repo, "HEAD")
    return sorted(p for p in before if now.get(p) != before[p])


def plan_upgrade(repo: git.Repo, target: str | None = None, branch: str = PRODUCTION_BRANCH) -> UpgradePlan:
    """Check the clone, fetch tags and plan the hops from its current release to `target`."""
    check_preconditions(repo, branch)
    fetch_tags(repo)
    current = current_version(repo)
    result = plan_upgrade_path(current, all_tags(repo), target, enterprise=is_enterprise(repo))
    edits = local_edits(repo, current)
    if edits and not result.refused:
        result.warnings.append("tracked upstream files edited on this branch (a hop conflicts if upstream "
                               f"changes them too): {', '.join(edits)}")
    return result


# --- the hop merge ---------------------------------------------------------------------------


@dataclass
class MergeResult:
    tag: str
    base: str
    previous_head: str
    commit: str
    pre_upgrade_marker: str | None
    operator_files: list[str] = field(default_factory=list)  # changed on the branch since `base`
    merged_files: list[str] = field(default_factory=list)    # of those, changed upstream too (merged)


def _merge_file(repo: git.Repo, base: bytes, ours: bytes, theirs: bytes, tmp: Path) -> str | None:
    """Three-way merge of one file's contents; the merged blob's id, or None on a conflict."""
    paths = []
    for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
        (tmp / name).write_bytes(data)
        paths.append(str(tmp / name))
    status, _, _ = repo.git.execute(["git", "merge-file", "-q", *paths], with_extended_output=True,
                                    with_exceptions=False)
    if status != 0:
        return None
    return _git(repo, "hash-object", "-w", "--no-filters", paths[0])


def _blob(repo: git.Repo, sha: str) -> bytes:
    return repo.odb.stream(bytes.fromhex(sha)).read()


def _merged_entries(repo: git.Repo, base: str, tag: str) -> tuple[dict[str, tuple[str, str] | None],
                                                                   dict[str, str], list[str], list[str]]:
    """What the operator's changes since `base` become on top of `tag`: path -> entry (None:
    deleted), the conflicts (path -> cause), the operator's paths, and the three-way merged ones."""
    old, head, new = _tree(repo, _tag_ref(base)), _tree(repo, "HEAD"), _tree(repo, _tag_ref(tag))
    mine = sorted(p for p in old.keys() | head.keys() if old.get(p) != head.get(p))
    result: dict[str, tuple[str, str] | None] = {}
    conflicts: dict[str, str] = {}
    merged = []
    with tempfile.TemporaryDirectory(prefix="mender-upgrade-merge-") as tmp:
        for path in mine:
            b, o, t = old.get(path), head.get(path), new.get(path)
            if t == b or o == t:
                result[path] = o
                continue
            if b is None:
                conflicts[path] = f"added on this branch and in {tag} with different content"
            elif o is None:
                conflicts[path] = f"deleted on this branch, changed in {tag}"
            elif t is None:
                conflicts[path] = f"changed on this branch, deleted in {tag}"
            elif not all(e[0] in ("100644", "100755") for e in (b, o, t)):
                conflicts[path] = f"changed on this branch and in {tag} (not a regular file)"
            else:
                sha = _merge_file(repo, _blob(repo, b[1]), _blob(repo, o[1]), _blob(repo, t[1]), Path(tmp))
                if sha is None:
                    conflicts[path] = f"edited on this branch since {base}, and {tag} changed the same lines"
                    continue
                result[path] = (o[0] if o[0] != b[0] else t[0], sha)
                merged.append(path)
    return result, conflicts, mine, merged


def _write_tree(repo: git.Repo, tag: str, entries: dict[str, tuple[str, str] | None]) -> str:
    """The tree of `tag` with `entries` applied, built in a throw-away index (the operator's
    index is never touched)."""
    with tempfile.TemporaryDirectory(prefix="mender-upgrade-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", _tag_ref(tag), env=env)
        if entries:
            null = "0" * len(repo.head.commit.hexsha)
            info = Path(tmp) / "index-info"
            info.write_bytes(b"".join(
                (f"{e[0]} {e[1]}\t{p}" if e else f"0 {null}\t{p}").encode() + b"\0" for p, e in entries.items()))
            _git(repo, "update-index", "-z", "--index-info", env=env, stdin=info)
        return _git(repo, "write-tree", env=env)


def _merge_message(result: MergeResult, branch: str) -> str:
    lines = [f"Merge tag '{result.tag}' into {branch}", "",
             f"Upgrade Mender {result.base} -> {result.tag} (mender-upgrade). Three-way merge with base",
             f"{result.base}: upstream files take {result.tag}'s content; this branch's own changes since",
             f"{result.base} are kept."]
    if result.merged_files:
        lines += ["", "Changed on both sides, merged:", *(f"- {p}" for p in result.merged_files)]
    return "\n".join(lines)


def _utc_stamp(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def merge_tag(repo: git.Repo, tag: str, *, base: str | None = None, tag_head: bool = True,
              now: datetime | None = None) -> MergeResult:
    """Merge release `tag` into HEAD with the current release `base` as merge base.

    On success HEAD is a merge commit of the old HEAD and `tag`, and the old HEAD is marked
    `refs/mender-upgrade/pre-upgrade/<base>-to-<tag>-<UTC time>` (unless `tag_head` is false;
    `pre_upgrade_marker` holds the marker's name without the namespace). On a conflict
    (the operator's edits against upstream changes) raise MergeConflict with nothing changed.
    """
    validate_version(tag)
    base = validate_version(base or current_version(repo))
    head = repo.head.commit.hexsha
    if repo.is_ancestor(_release(repo, tag), repo.head.commit):
        return MergeResult(tag, base, head, head, None)
    entries, conflicts, mine, merged = _merged_entries(repo, base, tag)
    if conflicts:
        raise MergeConflict(tag, base, conflicts)
    result = MergeResult(tag, base, head, "", None, mine, merged)
    tree = _write_tree(repo, tag, entries)
    branch = "HEAD" if repo.head.is_detached else repo.active_branch.name
    result.commit = _git(repo, "commit-tree", tree, "-p", head, "-p", _release(repo, tag).hexsha,
                         "-m", _merge_message(result, branch))
    if tag_head:
        migrate_marker_tags(repo)  # an old marker tag would otherwise still win `git describe`
        result.pre_upgrade_marker = f"{PRE_UPGRADE_PREFIX}{base}-to-{tag}-{_utc_stamp(now)}"
        create_marker(repo, result.pre_upgrade_marker, head,
                      f"State before upgrading Mender {base} -> {tag} (mender-upgrade)")
    try:
        _git(repo, "merge", "--ff-only", "--quiet", result.commit)
    except GitFailed:
        if result.pre_upgrade_marker:
            delete_marker(repo, result.pre_upgrade_marker)
        raise
    return result


# --- review material -------------------------------------------------------------------------


def _show(repo: git.Repo, version: str, path: str) -> str | None:
    try:
        blob = _release(repo, version).tree / path
    except KeyError:
        return None
    return blob.data_stream.read().decode()


def base_services(repo: git.Repo, version: str) -> set[str]:
    """Services the release's top-level docker-compose*.yml files define."""
    services: set[str] = set()
    for blob in _release(repo, version).tree.blobs:
        if blob.name.startswith("docker-compose") and blob.name.endswith(".yml"):
            doc = yaml.safe_load(blob.data_stream.read()) or {}
            services |= set((doc.get("services") or {}).keys())
    return services


def removed_services(repo: git.Repo, old: str, new: str) -> list[str]:
    """Services release `old` defines and `new` no longer does (their overrides must go)."""
    return sorted(base_services(repo, old) - base_services(repo, new))


@dataclass
class HopReview:
    """What one hop brings, for the person who approves it."""

    from_version: str
    to_version: str
    log: list[str]
    diff: str
    removed_services: list[str]
    drift: dict[str, list[TemplateChange]]  # config file -> its template changes

    def to_markdown(self, max_changes: int = 20, max_diff: int = 6000) -> str:
        """The approval form's section for this hop: commits, removed services, the changed keys
        of each config file and what happens to them, and the diff (folded, cut at `max_diff`)."""
        lines = [f"### {self.from_version} → {self.to_version}: {len(self.log)} upstream commits",
                 f"Services removed upstream: {', '.join(self.removed_services) or 'none'}"]
        for config, changes in self.drift.items():
            if changes:
                lines.append(f"Template drift in `{config}`:")
                # Keys and what happens to them, never values: the operator's current value of a
                # renamed key may be a secret.
                lines += [f"- `{c.key}`: {c.status}" + (f" ({c.note})" if c.note else "")
                          for c in changes[:max_changes]]
        if self.diff:
            lines += ["<details><summary>diff of templates and compose files</summary>", "", "```diff",
                      self.diff[:max_diff] + ("\n… (truncated)" if len(self.diff) > max_diff else ""), "```",
                      "</details>"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"from": self.from_version, "to": self.to_version, "log": self.log, "diff": self.diff,
                "removed_services": self.removed_services,
                "drift": {f: [c.to_dict() for c in changes] for f, changes in self.drift.items()}}


def _path_exists(roots: list[Path], tree: git.Tree | None = None) -> Callable[[str], bool]:
    """Whether a repo-relative path exists in one of `roots`, or in `tree` (a release's files)."""
    def exists(relative: str) -> bool:
        relative = relative.removeprefix("./")
        if any((root / relative).exists() for root in roots):
            return True
        try:
            return tree is not None and bool(tree / relative)
        except KeyError:
            return False
    return exists


def review_hop(repo: git.Repo, old: str, new: str) -> HopReview:
    """What the hop brings: upstream's commits, the compose/template/config diff between the tags,
    and the keys of the operator's prod.yml (and enterprise.yml) whose template changed."""
    old_ref, new_ref = _tag_ref(old), _tag_ref(new)
    log = _git(repo, "log", "--oneline", "--no-decorate", f"{old_ref}..{new_ref}").splitlines()
    diff = _git(repo, "diff", old_ref, new_ref, "--", *REVIEW_PATHS)
    gone = removed_services(repo, old, new)
    root = Path(repo.working_tree_dir or ".")
    drift = {}
    for config, template in TEMPLATES.items():
        old_tpl, new_tpl = _show(repo, old, template), _show(repo, new, template)
        if (root / config).is_file() and old_tpl is not None and new_tpl is not None:
            drift[config] = template_drift((root / config).read_text(), old_tpl, new_tpl,
                                           removed_services=tuple(gone),
                                           path_exists=_path_exists([root], _release(repo, new).tree))
    return HopReview(old, new, log, diff, gone, drift)


# --- the configuration that goes with a hop --------------------------------------------------


@dataclass
class ConfigUpdate:
    commits: list[str] = field(default_factory=list)
    storage_alias: str | None = None
    changes: dict[str, list[TemplateChange]] = field(default_factory=dict)

    @property
    def drift(self) -> list[TemplateChange]:
        return [c for changes in self.changes.values() for c in changes
                if c.status not in ("carried", "removed-service")]


def _commit(repo: git.Repo, paths: list[str], message: str) -> str:
    _git(repo, "add", "--", *paths)
    _git(repo, "commit", "--quiet", "-m", message, "--", *paths)
    return repo.head.commit.hexsha


def _alias_message(old: str, new: str, alias: str) -> str:
    return "\n".join([
        f"production: storage alias for Mender {new}'s gateway (prod.yml)", "",
        f"{new} removes storage-proxy; the Traefik API gateway serves the artifact storage.",
        f"Devices and presigned URLs keep using {alias}, so:",
        f"- mender-api-gateway: network alias {alias} (bare DNS name, mapping form)",
        f"- storage-proxy: override removed (no such service after {old}; compose fails on it)",
        "- mender-deployments: DEPLOYMENTS_AWS_URI without :9000 (only 443 is served)",
        "- mender-api-gateway: Traefik command and certificate mounts from the template, where missing",
        "", "Made by mender-upgrade."])


def _verb(change: TemplateChange) -> str:
    if change.status == "removed-service":
        return "override removed (no such service any more)"
    return "removed" if change.new is MISSING else "added" if change.current is MISSING else "updated"


def _carry_message(old: str, new: str, changes: dict[str, list[TemplateChange]]) -> str:
    lines = [f"production: carry template changes {old} -> {new} into the configuration", "",
             "prod.yml is a copy of prod.yml.template, so merges never update it. Keys that still",
             f"held the {old} template value now hold {new}'s; overrides of services {new} no",
             "longer defines are removed."]
    for config, items in changes.items():
        done = [c for c in items if c.status in ("carried", "removed-service")]
        left = [c for c in items if c not in done]
        if done:
            lines += ["", f"{config}:", *(f"- {c.key}: {_verb(c)}" for c in done)]
        if left:
            lines += ["", f"{config}, left as they are (decide in review):",
                      *(f"- {c.key}: {c.status} ({c.note})" for c in left)]
    return "\n".join(lines + ["", "Made by mender-upgrade."])


def update_config(repo: git.Repo, old: str, new: str, extra_roots: tuple[Path, ...] = ()) -> ConfigUpdate:
    """After merging `new`: the storage alias patch (hops into 2.7) and the template carry-over,
    each committed with a message saying what and why. `extra_roots` are more folders in
    which mounted files may exist (the operator's clone, for a dry run's worktree)."""
    root = Path(repo.working_tree_dir or ".")
    update = ConfigUpdate()
    prod = root / PROD_YML
    if Version.parse(old).line < ALIAS_PATCH_LINE <= Version.parse(new).line:
        text = prod.read_text()
        update.storage_alias = find_storage_alias(text)
        patched = patch_storage_alias(text, _show(repo, new, TEMPLATES[PROD_YML]) or "", update.storage_alias)
        if patched != text:
            prod.write_text(patched)
            update.commits.append(_commit(repo, [PROD_YML], _alias_message(old, new, update.storage_alias or "")))
    gone = tuple(removed_services(repo, old, new))
    written = []
    for config, template in TEMPLATES.items():
        old_tpl, new_tpl = _show(repo, old, template), _show(repo, new, template)
        if not (root / config).is_file() or old_tpl is None or new_tpl is None:
            continue
        text = (root / config).read_text()
        result = carry_template_changes(text, old_tpl, new_tpl, removed_services=gone,
                                        path_exists=_path_exists([root, *extra_roots]))
        update.changes[config] = result.changes
        if result.text != text:
            (root / config).write_text(result.text)
            written.append(config)
    if written:
        update.commits.append(_commit(repo, written, _carry_message(old, new, update.changes)))
    if Version.parse(new).line >= ALLOWED_HOSTS_LINE and prod.is_file():
        text = prod.read_text()
        alias = find_storage_alias(text)
        allowed = allow_storage_host(text, alias) if alias else text
        if allowed != text:
            prod.write_text(allowed)
            update.commits.append(_commit(repo, [PROD_YML], _allowed_hosts_message(new, alias or "")))
    return update


def _allowed_hosts_message(new: str, alias: str) -> str:
    return "\n".join([
        f"production: {alias} in the gateway's ALLOWED_HOSTS for Mender {new} (prod.yml)", "",
        "From 3.2 the Traefik gateway rejects requests for any host name not in ALLOWED_HOSTS;",
        f"devices and presigned URLs reach the artifact storage as {alias}.", "", "Made by mender-upgrade."])


def check_compose_config(root: Path) -> None:
    """`./run config -q`: the compose files and the operator's overrides form a valid project.
    The target release's ./run runs here before the approval (dry run): it sees no secret of ours."""
    run_compose(root, ["config", "-q"], timeout=120, untrusted=True)


# --- hops ------------------------------------------------------------------------------------


@dataclass
class HopResult:
    from_version: str
    to_version: str
    merge: MergeResult
    config: ConfigUpdate
    warnings: list[str] = field(default_factory=list)


def _describe_warning(repo: git.Repo, version: str) -> str | None:
    """production/run exports `git describe --tags --abbrev=0` as INTEGRATION_VERSION (the GUI
    shows it); a tag of the operator's own near HEAD wins over the release tag (the tool's
    markers are not tags, so they never do)."""
    described = _git(repo, "describe", "--tags", "--abbrev=0")
    if described == version:
        return None
    return (f"`git describe --tags` names {described}, so ./run exports INTEGRATION_VERSION={described}; "
            f"move that tag out of refs/tags/ or delete it (git tag -d {described}) so it names {version}")


def upgrade_hop(repo: git.Repo, old: str, new: str, *, tag_head: bool = True,
                check: Callable[[Path], None] = check_compose_config,
                extra_roots: tuple[Path, ...] = ()) -> HopResult:
    """Merge release `new` into the clone at release `old`, update its configuration, check it.

    If the configuration update or check fails, the hop is undone (back to its pre-upgrade marker;
    the clone was clean before it, so nothing is lost) and HopFailed says why."""
    merge = merge_tag(repo, new, base=old, tag_head=tag_head)
    try:
        config = update_config(repo, old, new, extra_roots)
        check(Path(repo.working_tree_dir or "."))
    except UpgradeError as exc:
        if merge.pre_upgrade_marker:
            _git(repo, "reset", "--hard", "--quiet", marker_ref(merge.pre_upgrade_marker))
        state = f"the clone is back at {marker_ref(merge.pre_upgrade_marker)}" if merge.pre_upgrade_marker else "the hop was not kept"
        raise HopFailed(f"hop {old} -> {new} failed: {exc.message}", f"{state}; {exc.hint}") from exc
    result = HopResult(old, new, merge, config)
    warning = _describe_warning(repo, new) if merge.pre_upgrade_marker else None
    result.warnings += [warning] if warning else []
    return result


class _HopOptions(TypedDict, total=False):
    """upgrade_hop's keyword options, passed through by _hops."""
    tag_head: bool
    check: Callable[[Path], None]
    extra_roots: tuple[Path, ...]


def _hops(repo: git.Repo, hops: list[str], on_hop: Callable[[HopResult], None],
          **options: Unpack[_HopOptions]) -> list[HopResult]:
    results = []
    current = current_version(repo)
    for hop in [validate_version(h) for h in hops]:
        results.append(upgrade_hop(repo, current, hop, **options))
        on_hop(results[-1])
        current = hop
    return results


def update_repository(repo: git.Repo, hops: list[str], *,
                      check: Callable[[Path], None] = check_compose_config,
                      on_hop: Callable[[HopResult], None] = lambda result: None) -> list[HopResult]:
    """Every hop in turn from the current release; a failing hop is undone and raises, the hops
    before it stay (each has its pre-upgrade marker)."""
    return _hops(repo, hops, on_hop, check=check)


@contextmanager
def temporary_worktree(repo: git.Repo) -> Iterator[git.Repo]:
    """A detached worktree of HEAD in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mender-upgrade-dry-run-"))
    path = folder / "integration"
    _git(repo, "worktree", "add", "--quiet", "--detach", str(path), "HEAD")
    try:
        yield git.Repo(path)
    finally:
        _git(repo, "worktree", "remove", "--force", str(path))
        _git(repo, "worktree", "prune")
        shutil.rmtree(folder, ignore_errors=True)


def dry_run(repo: git.Repo, hops: list[str], *, check: Callable[[Path], None] = check_compose_config,
            on_hop: Callable[[HopResult], None] = lambda result: None) -> list[HopResult]:
    """The hops in a temporary worktree: conflicts, config changes and checks, without touching
    the operator's branch, index or files (no pre-upgrade markers either)."""
    with temporary_worktree(repo) as work:
        return _hops(work, hops, on_hop, check=check, tag_head=False,
                     extra_roots=(Path(repo.working_tree_dir or "."),))


# --- sharing the result ----------------------------------------------------------------------

NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}  # a credential prompt would hang a scheduled run until its timeout
REJECTED, UP_TO_DATE = "!", "="  # `git push --porcelain` flags


def _push_lines(out: str) -> list[tuple[str, str, str]]:
    """(flag, remote ref, summary) of each ref line of `git push --porcelain` output."""
    lines = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and len(parts[0]) == 1:
            lines.append((parts[0], parts[1].rsplit(":", 1)[-1], parts[2]))
    return lines


def push_to_company_remote(integration_dir: Path, remote: str, branch: str | None = None) -> list[str]:
    """Push the production branch (default: the checked-out one) and every pre-upgrade marker
    (refs/mender-upgrade/pre-upgrade/*, explicit refspecs: a plain push or `--tags` never sends
    them) to the configured remote `remote`: never forced, all or nothing (`--atomic`). Returns
    the refs the remote did not have yet (empty when it was up to date).

    failed-upgrade markers stay local: they hold merges that never reached production, are for
    diagnosing this host, and would only add abandoned commits to a shared remote."""
    validate_remote(remote)
    repo = open_integration(integration_dir)
    if remote not in [r.name for r in repo.remotes]:
        raise RemoteMissing(f"the clone at {repo.working_tree_dir} has no remote {remote!r}",
                            f"add it (git remote add {remote} <url>) or change staging.push_remote")
    if branch is None:
        if repo.head.is_detached:
            raise NotOnProductionBranch("HEAD is detached (not on a branch): nothing to push",
                                        "check out the production branch or name it")
        branch = repo.active_branch.name
    if validate_branch(branch) not in [head.name for head in repo.heads]:
        raise InvalidRef(f"the clone has no branch {branch!r}", "name a local branch (git branch --list)")
    migrate_marker_tags(repo)
    refs = [f"refs/heads/{branch}", *(marker_ref(name) for name in sorted(markers(repo, PRE_UPGRADE_PREFIX)))]
    status, out, err = repo.git.execute(
        ["git", "push", "--porcelain", "--atomic", remote, *(f"{ref}:{ref}" for ref in refs)],
        with_extended_output=True, with_exceptions=False, env=NO_PROMPT, kill_after_timeout=FETCH_TIMEOUT_S)
    results = _push_lines(out)
    if any(flag == REJECTED for flag, _, _ in results):
        # With --atomic every other ref is refused too ("atomic push failed"); name only the causes.
        causes = [scrub(f"{ref}: {summary}") for flag, ref, summary in results
                  if flag == REJECTED and "atomic push failed" not in summary] or [scrub(err.strip())]
        raise PushRejected(f"{remote} refused the push (nothing was pushed):\n  " + "\n  ".join(causes),
                           f"{remote} has commits or tags this clone does not: fetch and look "
                           f"(git fetch {remote}; git log {branch}..{remote}/{branch}); never force-push "
                           "over another host's history (use a branch per host)")
    if status != 0:
        raise RemoteUnreachable(f"`git push {remote}` failed: {scrub((err or out).strip())}",
                                f"check the remote's URL and credentials (git remote -v; git push {remote} by hand)")
    return [ref for flag, ref, _ in results if flag != UP_TO_DATE]
