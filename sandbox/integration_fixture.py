"""A bare git repository shaped like mendersoftware/integration, and an operator's clone of it.

`create_upstream` writes the whole history with one `git fast-import` run. `master` develops
each minor of `FIXTURE_TAGS` in turn (its version lines pin `master`); every minor forks a
release branch `N.M.x` whose "Bump versions for Mender X.Y.Z" commits pin those lines to the
release and carry the annotated stable tags. As on the real repository, the docs' plain
`git merge <next minor's tag>` therefore conflicts in upstream files the operator never
touched (image tags, version pins, CI files), while merges inside one minor stay clean.

`create_operator_clone` follows the docs' production procedure: clone, `production` branch at
a tag, `production/config/prod.yml` from the template, keys under `production/keys-generated/`,
everything committed. Authors and dates are fixed, so every run yields the same commit ids.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import git

from mender_upgrade.sandbox.release_layout import Tree, _minor, _vkey
from mender_upgrade.sandbox.release_tree import _LICENSE, _README, release_tree
from mender_upgrade.sandbox.releases import BROKEN_VERSION, FIXTURE_TAGS, IGNORED_TAGS

# --- what the operator's production setup contains -------------------------------------------

OPERATOR_GATEWAY_HOST = "mender.example.com"
OPERATOR_STORAGE_HOST = "s3.example.com"
OPERATOR_MINIO_ACCESS_KEY = "mender-deployments"
OPERATOR_MINIO_SECRET_KEY = "Qd7wJc2hX9pLm4Rt"
OPERATOR_MAX_IMAGE_SIZE = "21474836480"
PRODUCTION_BRANCH = "production"

_UPSTREAM_IDENTITY = ("Mender Test Bot", "mender@northern.tech")
_OPERATOR_IDENTITY = ("Example Ops", "ops@example.com")
_UPSTREAM_EPOCH = 1598918400  # 2020-09-01 00:00:00 UTC
_COMMIT_SPACING = 20 * 86400
_OPERATOR_EPOCH = 1681293600  # 2023-04-12 10:00:00 UTC

# Commit messages of master's development of each minor (what changed in the layout).
_MASTER_CHANGES = {
    "2.5": "Upgrade MongoDB to 4.4",
    "2.6": "Add deviceconnect (docker-compose.connect.yml) for Mender Enterprise",
    "2.7": "Replace the nginx API gateway and the storage-proxy with Traefik",
    "3.0": "Traefik: route with the file provider instead of docker labels; add NATS",
    "3.1": "keygen: one certificate for the API gateway and the storage",
    "3.2": "api-gateway: enforce ALLOWED_HOSTS, a comma separated list",
    "3.3": "deployments: DEPLOYMENTS_AWS_EXTERNAL_URI, talk to minio directly",
    "3.5": "Add the reporting service and OpenSearch",
    "3.6": "Remove reporting and OpenSearch; run: prefer `docker compose`",
    "3.7": "Upgrade MongoDB to 5.0",
}
# Commit messages of fixes that land on a release branch before a patch's version bump.
_PATCH_FIXES = {
    "2.6.4": "verify-docker-versions: accept Docker Compose v2",
    "3.0.1": "prod.yml.template: the storage alias is a bare DNS name",
    "3.0.2": "verify-docker-versions: accept Docker Compose v2",
    "3.1.1": "verify-docker-versions: accept Docker Compose v2",
    "3.8.5": "verify-docker-versions: accept Docker Compose v5",
}
# Where the `IGNORED_TAGS` go. Pre-release/build tags: name -> release whose layout their bump
# commit on the release branch has (before/after the stable tags). Master tags: name -> minor
# whose development commit on master carries them (`internal-*` lightweight, others annotated).
_PRERELEASE_TAGS = {"2.7.0b1": "2.7.0"}
_BUILD_TAGS = {"3.0.3-build3": "3.0.2", "3.4.1-build1": "3.4.0"}
_MASTER_TAGS = {"internal-2.6": "2.6", "saas-v2023.01.01": "3.4"}

# --- writing history -------------------------------------------------------------------------


@dataclass
class _FastImport:
    """A `git fast-import` stream: blobs deduplicated by content, marks for commits."""

    chunks: list[bytes] = field(default_factory=list)
    blobs: dict[bytes, int] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    next_mark: int = 1

    def _mark(self) -> int:
        self.next_mark += 1
        return self.next_mark - 1

    def _data(self, payload: bytes) -> None:
        self.chunks.append(b"data %d\n" % len(payload) + payload + b"\n")

    def _blob(self, text: str) -> int:
        payload = text.encode()
        if payload not in self.blobs:
            self.blobs[payload] = mark = self._mark()
            self.chunks.append(b"blob\nmark :%d\n" % mark)
            self._data(payload)
        return self.blobs[payload]

    def commit(self, branch: str, parent: str | None, message: str, tree: Tree, when: int) -> str:
        """Append a commit whose tree is exactly `tree`; `parent` is a `:mark` or a commit id."""
        entries = [
            (path, "100755" if exe else "100644", self._blob(text)) for path, (text, exe) in sorted(tree.items())
        ]
        mark = self._mark()
        name, email = _UPSTREAM_IDENTITY
        head = f"commit refs/heads/{branch}\nmark :{mark}\n"
        head += f"author {name} <{email}> {when} +0000\ncommitter {name} <{email}> {when} +0000\n"
        self.chunks.append(head.encode())
        self._data(message.encode() + b"\n")
        lines = [f"from {parent}\n"] if parent else []
        lines.append("deleteall\n")
        lines += [f"M {mode} :{blob} {path}\n" for path, mode, blob in entries]
        self.chunks.append("".join(lines).encode() + b"\n")
        return f":{mark}"

    def tag(self, name: str, commit: str, when: int, message: str | None) -> None:
        """An annotated tag with `message`, or a lightweight one when `message` is None."""
        self.tags.append(name)
        if message is None:
            self.chunks.append(f"reset refs/tags/{name}\nfrom {commit}\n\n".encode())
            return
        tagger, email = _UPSTREAM_IDENTITY
        self.chunks.append(f"tag {name}\nfrom {commit}\ntagger {tagger} <{email}> {when} +0000\n".encode())
        self._data(message.encode() + b"\n")

    def run(self, repo: Path) -> None:
        subprocess.run(
            ["git", "fast-import", "--quiet", "--done"], cwd=repo, check=True,
            input=b"".join(self.chunks) + b"done\n",
        )


@dataclass
class _Clock:
    """Commit timestamps: `tick` advances one `_COMMIT_SPACING` and returns the new time."""

    now: int

    def tick(self) -> int:
        self.now += _COMMIT_SPACING
        return self.now


def _tagged_bump(stream: _FastImport, clock: _Clock, branch: str, head: str, layout: str, pin: str) -> str:
    """A "Bump versions for Mender <pin>" commit with the layout of `layout`, tagged `pin`."""
    head = stream.commit(branch, head, f"Bump versions for Mender {pin}", release_tree(layout, pin), clock.tick())
    stream.tag(pin, head, clock.now, f"Mender {pin}")
    return head


def _release_branch(stream: _FastImport, clock: _Clock, minor: str, fork: str) -> None:
    """The `<minor>.x` branch: pre-release, per patch (fixes +) "Bump versions" + tag, builds."""
    branch, head, layout, pin = f"{minor}.x", fork, f"{minor}.0", "master"  # what `head` has
    for pre in (tag for tag, release in _PRERELEASE_TAGS.items() if _minor(release) == minor):
        layout, pin = _PRERELEASE_TAGS[pre], pre
        head = _tagged_bump(stream, clock, branch, head, layout, pin)
    for version in FIXTURE_TAGS[minor]:
        fixed = release_tree(version, pin)
        if fixed != release_tree(layout, pin):
            message = _PATCH_FIXES.get(version, f"Backport fixes for Mender {version}")
            head = stream.commit(branch, head, message, fixed, clock.tick())
        head = _tagged_bump(stream, clock, branch, head, version, version)
        layout = pin = version
    for build in (tag for tag, layout in _BUILD_TAGS.items() if _minor(layout) == minor):
        head = _tagged_bump(stream, clock, branch, head, _BUILD_TAGS[build], build)


def create_upstream(path: Path) -> Path:
    """Create a bare repository shaped like mendersoftware/integration at `path`; return `path`.

    Branches: `master`, `staging` and `N.M.x` for every minor of `FIXTURE_TAGS`; annotated
    stable tags on the release branches; `IGNORED_TAGS` on sensible commits.
    """
    git.Repo.init(path, bare=True, initial_branch="master")
    stream, clock = _FastImport(), _Clock(_UPSTREAM_EPOCH)
    intro: Tree = {"README.md": (_README, False), "LICENSE": (_LICENSE, False)}
    master = stream.commit("master", None, "Initial commit", intro, clock.tick())
    for minor in FIXTURE_TAGS:
        layout = f"{minor}.0"
        message = _MASTER_CHANGES.get(minor, f"Mender {minor} development")
        master = stream.commit("master", master, message, release_tree(layout, "master"), clock.tick())
        for tag in (t for t, on in _MASTER_TAGS.items() if on == minor):
            stream.tag(tag, master, clock.now, None if tag.startswith("internal-") else f"Hosted Mender {tag}")
        _release_branch(stream, clock, minor, master)
    last = f"{list(FIXTURE_TAGS)[-1]}.0"
    stream.commit("staging", master, "Pin staging images", release_tree(last, "staging"), clock.tick())
    missing = set(IGNORED_TAGS) - set(stream.tags)
    if missing:
        raise ValueError(f"no place for ignored tags {sorted(missing)}")
    stream.run(path)
    return path


def add_broken_release(upstream: Path) -> str:
    """Add `BROKEN_VERSION` to `upstream`: a normal bump commit on its minor's branch, tagged."""
    repo = git.Repo(upstream)
    branch = f"{_minor(BROKEN_VERSION)}.x"
    tip = repo.commit(branch)
    when = tip.committed_date + _COMMIT_SPACING
    stream = _FastImport()
    head = stream.commit(branch, tip.hexsha, f"Bump versions for Mender {BROKEN_VERSION}",
                         release_tree(BROKEN_VERSION), when)
    stream.tag(BROKEN_VERSION, head, when, f"Mender {BROKEN_VERSION}")
    stream.run(upstream)
    return BROKEN_VERSION


# --- the operator's clone --------------------------------------------------------------------


def _fake_pem(kind: str, seed: str, lines: int) -> str:
    raw = b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(lines * 3 // 2 + 1))
    b64 = base64.b64encode(raw[: lines * 48]).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def keygen_files(version: str) -> dict[str, str]:
    """Fake (PEM-looking, not parseable) keygen output, relative to `production/keys-generated/`.

    <=3.0: `certs/{api-gateway,storage-proxy}/{cert.crt,private.key}`; >=3.1: `cert/...`;
    always `keys/{deviceauth,useradm}/private.key`.
    """
    dirs = ["cert"] if _vkey(version) >= (3, 1) else ["certs/api-gateway", "certs/storage-proxy"]
    files: dict[str, str] = {}
    for d in dirs:
        files[f"{d}/cert.crt"] = _fake_pem("CERTIFICATE", f"{d}/cert", 12)
        files[f"{d}/private.key"] = _fake_pem("EC PRIVATE KEY", f"{d}/key", 3)
    for svc in ("deviceauth", "useradm"):
        files[f"keys/{svc}/private.key"] = _fake_pem("RSA PRIVATE KEY", svc, 38)
    return files


# template line (stripped) -> the operator's replacement lines
_OPERATOR_EDITS: dict[str, list[str]] = {
    '- "443:443"': ["# ops: only on localhost, the haproxy in front terminates public TLS",
                    '- "127.0.0.1:443:443"'],
    '- "9000:9000"': ["# ops: only on localhost, the haproxy in front forwards s3.example.com",
                      '- "127.0.0.1:9000:9000"'],
    "- set-my-alias-here.com": [f"- {OPERATOR_STORAGE_HOST}"],
    "ALLOWED_HOSTS: my-gateway-dns-name": [f"ALLOWED_HOSTS: {OPERATOR_GATEWAY_HOST}"],
    "ALLOWED_HOSTS: my-gateway-dns-name,set-my-alias-here.com": [
        f"ALLOWED_HOSTS: {OPERATOR_GATEWAY_HOST},{OPERATOR_STORAGE_HOST}"],
    "DOWNLOAD_SPEED: 1m": ["# changed by ops 2023-04: faster artifact downloads", "DOWNLOAD_SPEED: 4m"],
    "DEPLOYMENTS_AWS_AUTH_KEY:": [f"DEPLOYMENTS_AWS_AUTH_KEY: {OPERATOR_MINIO_ACCESS_KEY}"],
    "DEPLOYMENTS_AWS_AUTH_SECRET:": [
        f"DEPLOYMENTS_AWS_AUTH_SECRET: {OPERATOR_MINIO_SECRET_KEY}",
        "# changed by ops 2023-04: bigger uploads (artifacts up to 20 GiB)",
        f'DEPLOYMENTS_STORAGE_MAX_IMAGE_SIZE: "{OPERATOR_MAX_IMAGE_SIZE}"'],
    "DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com:9000": [
        f"DEPLOYMENTS_AWS_URI: https://{OPERATOR_STORAGE_HOST}:9000"],
    "DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com": [f"DEPLOYMENTS_AWS_URI: https://{OPERATOR_STORAGE_HOST}"],
    "DEPLOYMENTS_AWS_EXTERNAL_URI: https://set-my-alias-here.com": [
        f"DEPLOYMENTS_AWS_EXTERNAL_URI: https://{OPERATOR_STORAGE_HOST}"],
    "MINIO_ACCESS_KEY:": [f"MINIO_ACCESS_KEY: {OPERATOR_MINIO_ACCESS_KEY}"],
    "MINIO_SECRET_KEY:": [f"MINIO_SECRET_KEY: {OPERATOR_MINIO_SECRET_KEY}"],
}


def operator_prod_yml(template: str) -> str:
    """The operator's `prod.yml`: the template with placeholders, keys and ports filled in."""
    out: list[str] = []
    for line in template.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        out += [indent + new for new in _OPERATOR_EDITS.get(line.strip(), [line.strip()])]
    text = "\n".join(out) + "\n"
    if "set-my-alias-here" in text or "my-gateway-dns-name" in text:
        raise ValueError("prod.yml.template has a placeholder the operator edits do not cover")
    return text


def _commit(repo: git.Repo, paths: Iterable[str], message: str, when: int) -> None:
    date = f"{when} +0000"
    repo.git.add(*paths)
    repo.git.commit("-m", message, env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})


def create_operator_clone(upstream: Path, dest: Path, version: str, *, enterprise: bool = False) -> Path:
    """Clone `upstream` into `dest` as an operator following the docs would; return `dest`.

    `production` branch at tag `version`, with three commits: the copied template, the keys
    (`production/keys-generated/`) and the final `production/config/prod.yml` (plus
    `enterprise.yml` when `enterprise`). The clone's local git identity is the operator's.
    """
    repo = git.Repo.clone_from(str(upstream), str(dest))
    with repo.config_writer() as config:
        config.set_value("user", "name", _OPERATOR_IDENTITY[0])
        config.set_value("user", "email", _OPERATOR_IDENTITY[1])
    repo.git.checkout("-b", PRODUCTION_BRANCH, version)
    config_dir = dest / "production" / "config"
    template = (config_dir / "prod.yml.template").read_text()
    (config_dir / "prod.yml").write_text(template)
    _commit(repo, ["production/config/prod.yml"], "production: initial template", _OPERATOR_EPOCH)

    keys_dir = dest / "production" / "keys-generated"
    for rel, text in keygen_files(version).items():
        (keys_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (keys_dir / rel).write_text(text)
    _commit(repo, ["production/keys-generated"], "production: adding generated keys and certificates",
            _OPERATOR_EPOCH + 600)

    (config_dir / "prod.yml").write_text(operator_prod_yml(template))
    paths = ["production/config/prod.yml"]
    if enterprise:
        (config_dir / "enterprise.yml").write_text((config_dir / "enterprise.yml.template").read_text())
        paths.append("production/config/enterprise.yml")
    _commit(repo, paths, "production: final configuration", _OPERATOR_EPOCH + 1800)
    return dest
