"""The fixture repository behaves like mendersoftware/integration under real git (and compose)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

import git
import pytest
import yaml

from mender_upgrade.sandbox import integration_fixture as fx
from mender_upgrade.sandbox.releases import BROKEN_VERSION, FIXTURE_TAGS, IGNORED_TAGS, Release, all_fixture_tags

STABLE = all_fixture_tags()


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, check=check, capture_output=True, text=True)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.create_upstream(tmp_path_factory.mktemp("upstream") / "integration.git")


@pytest.fixture(scope="module")
def upstream_repo(upstream: Path) -> git.Repo:
    return git.Repo(upstream)


def _show(repo: git.Repo, tag: str, path: str) -> str:
    return (repo.commit(tag).tree / path).data_stream.read().decode()


def _clean(clone: Path) -> bool:
    return _git(clone, "status", "--porcelain").stdout == ""


# --- history -----------------------------------------------------------------------------------


def test_creation_is_fast_and_reproducible(tmp_path: Path) -> None:
    start = time.monotonic()
    first = fx.create_upstream(tmp_path / "a.git")
    fx.create_operator_clone(first, tmp_path / "clone", "2.6.4")
    assert time.monotonic() - start < 5
    second = fx.create_upstream(tmp_path / "b.git")
    refs = [_git(repo, "for-each-ref", "--format=%(refname) %(objectname)").stdout for repo in (first, second)]
    assert refs[0] == refs[1]


def test_tags_are_the_stable_plus_the_ignored_ones(upstream: Path, upstream_repo: git.Repo) -> None:
    assert set(_git(upstream, "tag").stdout.split()) == set(STABLE) | set(IGNORED_TAGS)
    for tag in STABLE:
        assert _git(upstream, "cat-file", "-t", tag).stdout.strip() == "tag", tag  # annotated
        assert upstream_repo.commit(tag).message.strip() == f"Bump versions for Mender {tag}"


def test_release_branches_fork_from_master_and_carry_their_tags(upstream: Path) -> None:
    forks = []
    for minor, tags in FIXTURE_TAGS.items():
        branch = f"{minor}.x"
        for tag in tags:
            _git(upstream, "merge-base", "--is-ancestor", tag, branch)  # raises unless on the branch
        fork = _git(upstream, "merge-base", branch, "master").stdout.strip()
        assert _git(upstream, "merge-base", "--is-ancestor", tags[0], "master", check=False).returncode == 1
        forks.append(fork)
    assert len(set(forks)) == len(forks)  # master moves on between minors
    for older, newer in zip(forks, forks[1:]):
        assert _git(upstream, "merge-base", "--is-ancestor", older, newer).returncode == 0


def test_clone_sees_all_branches(upstream: Path, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4")
    remote = {line.strip() for line in _git(clone, "branch", "-r").stdout.splitlines()}
    expected = {"origin/master", "origin/staging", *(f"origin/{minor}.x" for minor in FIXTURE_TAGS)}
    assert expected <= remote
    assert _git(clone, "remote", "get-url", "origin").stdout.strip() == str(upstream)


# --- the operator's clone ---------------------------------------------------------------------


def test_operator_clone_at_264(upstream: Path, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4")
    assert _git(clone, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == fx.PRODUCTION_BRANCH
    assert _clean(clone)
    assert _git(clone, "describe", "--tags", "--abbrev=0").stdout.strip() == "2.6.4"
    tracked = set(_git(clone, "ls-files", "production").stdout.split())
    assert "production/config/prod.yml" in tracked
    assert {f"production/keys-generated/{rel}" for rel in fx.keygen_files("2.6.4")} <= tracked
    assert "production/keys-generated/certs/storage-proxy/cert.crt" in tracked
    prod = (clone / "production/config/prod.yml").read_text()
    doc = yaml.safe_load(prod)
    assert doc["services"]["mender-api-gateway"]["ports"] == ["127.0.0.1:443:443"]
    assert doc["services"]["storage-proxy"]["ports"] == ["127.0.0.1:9000:9000"]
    assert doc["services"]["storage-proxy"]["networks"]["mender"]["aliases"] == ["s3.example.com"]
    deployments = doc["services"]["mender-deployments"]["environment"]
    assert deployments["DEPLOYMENTS_AWS_URI"] == "https://s3.example.com:9000"
    assert deployments["DEPLOYMENTS_AWS_AUTH_KEY"] == doc["services"]["minio"]["environment"]["MINIO_ACCESS_KEY"]
    assert doc["services"]["mender-api-gateway"]["environment"]["ALLOWED_HOSTS"] == "mender.example.com"
    assert "# changed by ops 2023-04: bigger uploads" in prod
    assert doc["volumes"]["mender-db"]["external"]["name"] == "mender-db"
    assert "set-my-alias-here" not in prod and not (clone / "production/config/enterprise.yml").exists()
    log = _git(clone, "log", "--format=%s", "-4").stdout.splitlines()
    assert log[:3] == ["production: final configuration", "production: adding generated keys and certificates",
                       "production: initial template"]
    assert log[3] == "Bump versions for Mender 2.6.4"


def test_operator_clone_later_eras(upstream: Path, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "3.3.2", enterprise=True)
    assert _clean(clone)
    keys = clone / "production/keys-generated"
    assert (keys / "cert/cert.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (keys / "keys/useradm/private.key").is_file() and not (keys / "certs").exists()
    assert _git(clone, "ls-files", "--error-unmatch", "production/config/enterprise.yml").returncode == 0
    doc = yaml.safe_load((clone / "production/config/prod.yml").read_text())
    gateway = doc["services"]["mender-api-gateway"]
    assert gateway["environment"]["ALLOWED_HOSTS"] == "mender.example.com,s3.example.com"
    assert gateway["networks"]["mender"]["aliases"] == ["s3.example.com"]
    env = doc["services"]["mender-deployments"]["environment"]
    assert env["DEPLOYMENTS_AWS_EXTERNAL_URI"] == "https://s3.example.com"
    assert env["DEPLOYMENTS_AWS_URI"] == "http://minio:9000"


# --- merges as the docs do them -----------------------------------------------------------------


def test_cross_minor_merge_conflicts_in_upstream_files(upstream: Path, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4")
    head = _git(clone, "rev-parse", "HEAD").stdout
    assert _git(clone, "merge", "--no-edit", "2.7.2", check=False).returncode != 0
    conflicted = _git(clone, "diff", "--name-only", "--diff-filter=U").stdout.split()
    assert len(conflicted) >= 5
    assert "docker-compose.yml" in conflicted
    assert not [path for path in conflicted if path.startswith("production/")]  # operator files merge
    _git(clone, "merge", "--abort")
    assert _clean(clone) and _git(clone, "rev-parse", "HEAD").stdout == head


def test_patch_merge_inside_a_minor_is_clean(upstream: Path, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.1")
    _git(clone, "merge", "--no-edit", "2.6.4")
    assert _clean(clone)
    assert _git(clone, "describe", "--tags", "--abbrev=0").stdout.strip() == "2.6.4"
    assert (clone / "production/config/prod.yml").is_file()


def test_add_broken_release(tmp_path: Path) -> None:
    upstream = fx.create_upstream(tmp_path / "integration.git")
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.7.2")
    assert fx.add_broken_release(upstream) == BROKEN_VERSION
    repo = git.Repo(upstream)
    assert repo.commit("2.7.x") == repo.commit(BROKEN_VERSION)
    compose = yaml.safe_load(_show(repo, BROKEN_VERSION, "docker-compose.yml"))
    assert compose["services"]["mender-deployments"]["image"] == f"mendersoftware/deployments:mender-{BROKEN_VERSION}"
    _git(clone, "fetch", "--tags", "origin")
    _git(clone, "merge", "--no-edit", BROKEN_VERSION)
    assert _clean(clone)


# --- every tag's files --------------------------------------------------------------------------


@pytest.mark.parametrize("tag", STABLE)
def test_compose_files_name_the_release_images(upstream_repo: git.Repo, tag: str) -> None:
    tree = upstream_repo.commit(tag).tree
    for blob in tree.traverse():
        if blob.type == "blob" and blob.path.endswith((".yml", ".yaml", ".yml.template")):
            assert isinstance(yaml.safe_load(blob.data_stream.read()), dict), blob.path
    services: dict[str, dict[str, object]] = {}
    for name in ("docker-compose.yml", "docker-compose.storage.minio.yml"):
        for svc, spec in yaml.safe_load(_show(upstream_repo, tag, name))["services"].items():
            services.setdefault(svc, {}).update(spec)
    assert {svc: spec.get("image") for svc, spec in services.items()} == Release(tag).images()
    prod = yaml.safe_load(_show(upstream_repo, tag, "production/config/prod.yml.template"))
    assert set(prod["services"]) <= set(services)
    assert prod["services"]["mender-api-gateway"]["ports"] == ["443:443"]
    for name in ("docker-compose.yml", "docker-compose.storage.minio.yml"):
        assert "ports" not in _show(upstream_repo, tag, name)


@pytest.mark.parametrize("tag", STABLE)
def test_scripts_are_executable_bash(upstream_repo: git.Repo, tmp_path: Path, tag: str) -> None:
    tree = upstream_repo.commit(tag).tree
    scripts = ["production/run", "verify-docker-versions"]
    if _key(tag) >= (2, 7):
        scripts += ["migration/dump-db", "migration/restore-db"]
    for path in scripts:
        blob = tree / path
        assert blob.mode & stat.S_IXUSR, path
        copy = tmp_path / path.replace("/", "_")
        copy.write_bytes(blob.data_stream.read())
        assert subprocess.run(["bash", "-n", str(copy)], capture_output=True).returncode == 0, path


def test_template_eras(upstream_repo: git.Repo) -> None:
    def template(tag: str) -> str:
        return _show(upstream_repo, tag, "production/config/prod.yml.template")

    assert "--automigrate" in template("2.6.4") and "storage-proxy:" in template("2.6.4")
    assert "DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com:9000" in template("2.6.4")
    assert "storage-proxy:" not in template("2.7.0") and "/config/tls.toml" in template("2.7.2")
    buggy = "# https://s3.acme.org:9000, then set this to\n                    # https://s3.acme.org:9000"
    assert buggy in template("2.7.2") and buggy in template("3.0.0") and buggy not in template("3.0.1")
    assert "command:\n            - --accesslog" not in template("3.0.0")
    assert "certs/storage-proxy" in template("3.0.2") and "keys-generated/cert/" in template("3.1.0")
    assert "ALLOWED_HOSTS: my-gateway-dns-name,set-my-alias-here.com" in template("3.2.0")
    assert "DEPLOYMENTS_AWS_EXTERNAL_URI" in template("3.3.0")
    assert "DEPLOYMENTS_AWS_EXTERNAL_URI" not in template("3.2.2")
    assert "mender-reporting:" in template("3.5.1") and "mender-reporting:" not in template("3.6.0")
    tree_30 = upstream_repo.commit("3.0.0").tree
    traefik = {"traefik.yaml", "traefik.middlewares.yaml", "traefik.tls.yaml"}
    assert {b.name for b in (tree_30 / "config/traefik").blobs} == traefik


# --- scripts against stub docker binaries ---------------------------------------------------------

_STUB_DOCKER = """#!/bin/bash
if [ "$1" = info ]; then echo " Server Version: 24.0.7"; exit 0; fi
if [ "$1" = compose ] && [ -n "$STUB_COMPOSE_PLUGIN" ]; then
    if [ "$2" = version ]; then echo "$STUB_COMPOSE_PLUGIN"; exit 0; fi
    printf '%s\\n' docker "$@"; exit 0
fi
echo "docker: '$1' is not a docker command." >&2; exit 1
"""
_STUB_COMPOSE = """#!/bin/bash
if [ "$1" = version ]; then [ -n "$STUB_COMPOSE_V1" ] || exit 127; echo "$STUB_COMPOSE_V1"; exit 0; fi
printf '%s\\n' docker-compose "$@"
"""


@pytest.fixture
def stub_path(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", _STUB_DOCKER), ("docker-compose", _STUB_COMPOSE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def _notes_majors(tag: str) -> set[int]:
    """Compose majors accepted per mender-facts.md section 2 (independent of the fixture code)."""
    if tag == "3.8.5":
        return {1, 2, 5}
    if tag in ("2.6.4", "3.0.2") or _key(tag) >= (3, 1, 1):
        return {1, 2}
    return {1}


@pytest.mark.parametrize("tag", STABLE)
def test_verify_docker_versions_rules(upstream_repo: git.Repo, stub_path: str, tmp_path: Path, tag: str) -> None:
    script = tmp_path / "verify-docker-versions"
    script.write_text(_show(upstream_repo, tag, "verify-docker-versions"))
    script.chmod(0o755)
    cases = {"1.29.2": 1, "1.5.0": None, "2.20.2": 2, "v2.0.0": 2, "5.0.0": 5}
    for compose, major in cases.items():
        env = {"PATH": stub_path, "STUB_COMPOSE_V1": compose}
        accepted = subprocess.run([str(script)], env=env, capture_output=True, text=True)
        assert (accepted.returncode == 0) == (major in _notes_majors(tag)), (compose, accepted.stdout)
    plugin_only = {"PATH": stub_path, "STUB_COMPOSE_PLUGIN": "2.20.2"}
    result = subprocess.run([str(script)], env=plugin_only, capture_output=True, text=True)
    assert (result.returncode == 0) == (_key(tag) >= (3, 6)), result.stdout


def _run(clone: Path, env: dict[str, str]) -> list[str]:
    result = subprocess.run(["./run", "config", "-q"], cwd=clone / "production", env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_run_passes_the_compose_files(upstream: Path, stub_path: str, tmp_path: Path) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "m264", "2.6.4", enterprise=True)
    argv = _run(clone, {"PATH": stub_path, "STUB_COMPOSE_V1": "1.29.2"})
    files = ["../docker-compose.yml", "../docker-compose.storage.minio.yml", "../docker-compose.connect.yml",
             "../docker-compose.enterprise.yml", "./config/prod.yml", "./config/enterprise.yml"]
    assert argv == ["docker-compose", "-p", "menderproduction", *[a for f in files for a in ("-f", f)], "config", "-q"]

    clone = fx.create_operator_clone(upstream, tmp_path / "m365", "3.6.5")
    argv = _run(clone, {"PATH": stub_path, "STUB_COMPOSE_PLUGIN": "2.20.2"})
    assert argv[:4] == ["docker", "compose", "-p", "menderproduction"]
    assert "./config/prod.yml" in argv and "../docker-compose.enterprise.yml" not in argv
    assert _run(clone, {"PATH": stub_path, "STUB_COMPOSE_V1": "1.29.2"})[0] == "docker-compose"


# --- docker-compose v1 itself (skipped without it) ------------------------------------------------

needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")


def _compose_config(production: Path, enterprise: bool) -> subprocess.CompletedProcess[str]:
    files = ["../docker-compose.yml", "../docker-compose.storage.minio.yml"]
    if enterprise:
        files += [f"../{name}" for name in ("docker-compose.connect.yml", "docker-compose.config.yml")
                  if (production.parent / name).exists()] + ["../docker-compose.enterprise.yml"]
    files += ["./config/prod.yml"] + (["./config/enterprise.yml"] if enterprise else [])
    args = ["docker-compose", "-p", "x", *[a for f in files for a in ("-f", f)], "config", "-q"]
    return subprocess.run(args, cwd=production, capture_output=True, text=True)


@needs_compose
@pytest.mark.parametrize(("version", "enterprise"), [("2.6.4", False), ("2.6.4", True), ("2.7.2", False),
                                                      ("3.0.2", False), ("3.6.5", False), ("3.7.11", False)])
def test_docker_compose_accepts_the_operator_config(upstream: Path, tmp_path: Path, version: str,
                                                    enterprise: bool) -> None:
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", version, enterprise=enterprise)
    result = _compose_config(clone / "production", enterprise)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_old_prod_yml_breaks_on_27_compose_files(upstream: Path, tmp_path: Path) -> None:
    """The 2.6->2.7 trap (notes section 4): a kept storage-proxy override has no image any more."""
    clone = fx.create_operator_clone(upstream, tmp_path / "mender", "2.6.4")
    _git(clone, "checkout", "2.7.2", "--", "docker-compose.yml", "docker-compose.storage.minio.yml")
    result = _compose_config(clone / "production", False)
    assert result.returncode != 0
    assert "storage-proxy has neither an image nor a build context" in result.stderr
