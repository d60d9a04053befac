"""The operator's clone of the *real* `mendersoftware/integration`, made as the production docs do.

`MENDER_INTEGRATION_UPSTREAM` names the upstream (a path, URL or git bundle). The clone gets a
`production` branch at the release tag, `production/config/prod.yml` from that tag's template
with the docs' edits (gateway and storage DNS names, the minio/deployments keys,
`ALLOWED_HOSTS`), and the keys and certificates of the repository's own `keygen`, each step
committed on the branch; for Enterprise also `production/config/enterprise.yml` from the tag's
template (its presence is what makes `production/run` add `docker-compose.enterprise.yml`).
Only the published ports differ from the docs: the sandbox binds them to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import git

from mender_upgrade.sandbox.integration_fixture import (OPERATOR_GATEWAY_HOST, OPERATOR_MINIO_ACCESS_KEY,
                                         OPERATOR_MINIO_SECRET_KEY, OPERATOR_STORAGE_HOST, PRODUCTION_BRANCH)
from mender_upgrade.sandbox.processes import SandboxError

UPSTREAM_ENV = "MENDER_INTEGRATION_UPSTREAM"
_OPERATOR_IDENTITY = ("Example Ops", "ops@example.com")
# What makes a checkout the Mender integration repository with a docker-compose production setup.
_INTEGRATION_FILES = ("docker-compose.yml", "production/run", "production/config/prod.yml.template", "keygen")
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0"}
# What `production/run` needs for Enterprise (it adds the compose file when config/enterprise.yml exists).
_ENTERPRISE_FILES = ("docker-compose.enterprise.yml", "production/config/enterprise.yml.template")
_ENTERPRISE_YML = Path("production/config/enterprise.yml")


def configured_upstream() -> str | None:
    """The upstream `sandbox up` clones, or None for the generated fixture repository."""
    return os.environ.get(UPSTREAM_ENV) or None


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ | _GIT_ENV, timeout=600)


def clone_operator(upstream: str, dest: Path, version: str, enterprise: bool = False) -> Path:
    """Clone `upstream` into `dest` as an operator following the production docs (with the
    Enterprise configuration when `enterprise`); return `dest`.

    Raises SandboxError naming the upstream or the version when it is not a Mender integration
    repository or has no such release; `dest` is removed then.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _clone_checked(upstream, dest, version, enterprise)
        _configure(dest, version, enterprise)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _clone_checked(upstream: str, dest: Path, version: str, enterprise: bool) -> None:
    cloned = _git(["clone", "--quiet", "--no-checkout", upstream, str(dest)])
    if cloned.returncode != 0:
        reason = (cloned.stderr.strip().splitlines() or ["git clone failed"])[-1]
        raise SandboxError(f"{UPSTREAM_ENV}={upstream!r} cannot be cloned: {reason}")
    if _git(["rev-parse", "--verify", "--quiet", f"refs/tags/{version}^{{commit}}"], dest).returncode != 0:
        tags = _git(["tag", "--list", "--sort=-v:refname", f"{version.rsplit('.', 1)[0]}.*"], dest).stdout.split()
        raise SandboxError(f"version {version!r} is not a tag of {upstream!r}"
                           + (f"; releases of that minor: {', '.join(tags[:8])}" if tags else ""))
    listed = set(_git(["ls-tree", "-r", "--name-only", version], dest).stdout.split())
    missing = [f for f in _INTEGRATION_FILES if f not in listed]
    if missing:
        raise SandboxError(f"{upstream!r} at {version} is not a Mender integration repository with a "
                           f"docker-compose production setup: it lacks {', '.join(missing)}")
    if enterprise and not set(_ENTERPRISE_FILES) <= listed:
        raise SandboxError(f"{upstream!r} at {version} has no Enterprise production setup: it lacks "
                           f"{', '.join(f for f in _ENTERPRISE_FILES if f not in listed)}")


def _configure(dest: Path, version: str, enterprise: bool) -> None:
    repo = git.Repo(dest)
    with repo.config_writer() as config:
        config.set_value("user", "name", _OPERATOR_IDENTITY[0])
        config.set_value("user", "email", _OPERATOR_IDENTITY[1])
    repo.git.checkout("--quiet", "-b", PRODUCTION_BRANCH, version)
    production = dest / "production"
    template = (production / "config" / "prod.yml.template").read_text()
    (production / "config" / "prod.yml").write_text(template)
    repo.git.add("production/config/prod.yml")
    repo.git.commit("--quiet", "-m", "production: initial template")
    run_keygen(dest)
    repo.git.add("production/keys-generated")
    repo.git.commit("--quiet", "-m", "production: adding generated keys and certificates")
    (production / "config" / "prod.yml").write_text(operator_prod_yml(template))
    repo.git.add("production/config/prod.yml")
    repo.git.commit("--quiet", "-m", "production: final configuration")
    if enterprise:
        # The docs' Enterprise step: the template as is (it holds no placeholder), committed.
        _copy_enterprise_template(dest)
        repo.git.add(str(_ENTERPRISE_YML))
        repo.git.commit("--quiet", "-m", "production: Enterprise configuration")


def _copy_enterprise_template(root: Path) -> None:
    template = root / _ENTERPRISE_YML.with_name("enterprise.yml.template")
    (root / _ENTERPRISE_YML).write_text(template.read_text())


def release_files(clone: Path, versions: list[str], enterprise: bool = False) -> list[Path]:
    """The files of each tag in `versions` the clone carries, each in `<clone>/../releases/<tag>`
    with the operator's `prod.yml` (and with `enterprise`, `enterprise.yml`) from that tag's
    templates: enough for `./run config`."""
    out = []
    for version in versions:
        if _git(["rev-parse", "--verify", "--quiet", f"refs/tags/{version}^{{commit}}"], clone).returncode != 0:
            continue
        dest = clone.parent / "releases" / version
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", version], cwd=clone, capture_output=True,
                                 timeout=120, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, capture_output=True, check=True, timeout=120)
        config = dest / "production" / "config"
        (config / "prod.yml").write_text(operator_prod_yml((config / "prod.yml.template").read_text()))
        if enterprise and (dest / _ENTERPRISE_YML.with_name("enterprise.yml.template")).is_file():
            _copy_enterprise_template(dest)
        out.append(dest)
    return out


def run_keygen(dest: Path) -> None:
    """The docs' `../keygen`, run in `production/`: up to 3.0 two certificates
    (`CERT_API_CN`, `CERT_STORAGE_CN`), from 3.1 one (`CERT_CN`, the storage name as a SAN)."""
    env = os.environ | {"CERT_API_CN": OPERATOR_GATEWAY_HOST, "CERT_STORAGE_CN": OPERATOR_STORAGE_HOST,
                        "CERT_CN": OPERATOR_GATEWAY_HOST,
                        "CERT_SAN": f"DNS:{OPERATOR_GATEWAY_HOST},DNS:{OPERATOR_STORAGE_HOST}"}
    proc = subprocess.run(["bash", "../keygen"], cwd=dest / "production", env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0 or not (dest / "production" / "keys-generated" / "keys").is_dir():
        raise SandboxError(f"the repository's keygen failed (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-400:]}")


_PORT = re.compile(r'^(\s*-\s*)"(\d+):(\d+)"(\s*(#.*)?)$')


def operator_prod_yml(template: str) -> str:
    """The docs' edits of the tag's `prod.yml.template`, line by line (comments and layout kept).

    DNS names for gateway and storage, the minio key pair (same values for deployments),
    `ALLOWED_HOSTS` (both host names where traefik enforces it), and published ports on
    127.0.0.1 only.
    """
    storage, gateway = OPERATOR_STORAGE_HOST, OPERATOR_GATEWAY_HOST
    out: list[str] = []
    for line in template.splitlines():
        port = _PORT.match(line)
        if port:
            line = f'{port.group(1)}"127.0.0.1:{port.group(2)}:{port.group(3)}"{port.group(4)}'
        elif re.match(r"\s*(MINIO_ACCESS_KEY|DEPLOYMENTS_AWS_AUTH_KEY):\s*$", line):
            line = f"{line.rstrip()} {OPERATOR_MINIO_ACCESS_KEY}"
        elif re.match(r"\s*(MINIO_SECRET_KEY|DEPLOYMENTS_AWS_AUTH_SECRET):\s*$", line):
            line = f"{line.rstrip()} {OPERATOR_MINIO_SECRET_KEY}"
        elif re.match(r'\s*ALLOWED_HOSTS: "', line):
            # From 3.2 traefik enforces the list (the template quotes it from then): devices
            # reach storage under its own name, so the operator lists both.
            line = line.replace("my-gateway-dns-name", f"{gateway},{storage}")
        elif not line.lstrip().startswith("#"):
            line = line.replace("set-my-alias-here.com", storage).replace("my-gateway-dns-name", gateway)
        out.append(line)
    text = "\n".join(out) + "\n"
    leftover = [n for n in ("set-my-alias-here.com", "my-gateway-dns-name")
                if any(n in ln and not ln.lstrip().startswith("#") for ln in text.splitlines())]
    if leftover:
        raise SandboxError(f"prod.yml.template has placeholders the docs' edits do not cover: {leftover}")
    return text
