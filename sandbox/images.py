"""Build the stand-in images under their real Docker Hub names and publish them to the mirror.

No image can be downloaded here, so every image a runnable release's compose files name is
built locally: service stand-ins on a busybox rootfs, the mongo stand-in on a Debian trixie
rootfs (Python 3.13 for the MongoDB-wire server). Each built image carries a label with the
hash of its inputs; an image whose label matches is reused (the build cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from mender_upgrade.sandbox.engine import REGISTRY_PORT
from mender_upgrade.sandbox.home import STANDINS
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.sandbox.releases import BROKEN_VERSION, MENDER_SERVICES, RUNNABLE_VERSIONS, Release
from mender_upgrade.sandbox.standin_catalogue import INFRA, infra_recipe, mender_service
from mender_upgrade.tasks.service_health import INTERNAL_HEALTH_PATHS

INPUTS_LABEL = "org.mender-upgrade.standin-inputs"
BUSYBOX_BASE = "mender-upgrade-standin/busybox"
PYTHON_BASE = "mender-upgrade-standin/python313"
MONGO_VERSIONS = {"mongo:4.4": "4.4.29", "mongo:5.0": "5.0.26"}
# Enterprise-only services that migrate their database before serving (`--automigrate`).
_ENTERPRISE_MONGO_SERVICES = {"mender-tenantadm", "mender-auditlogs", "mender-devicemonitor"}
# busybox httpd's per-path basic auth: useradm's login answers 401 without credentials, as the real one.
HTTPD_CONF = INFRA / "httpd.conf"


def _digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for f in sorted(p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                h.update(f.relative_to(part).as_posix().encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:16]


def _current(client: docker.DockerClient, name: str, inputs: str) -> bool:
    try:
        return client.images.get(name).labels.get(INPUTS_LABEL) == inputs
    except ImageNotFound:
        return False


def _import_rootfs(client: docker.DockerClient, tar_bytes: bytes | Path, name: str, inputs: str) -> None:
    # `docker import` accepts a rootfs tar and Dockerfile-like changes; no registry involved.
    src = str(tar_bytes) if isinstance(tar_bytes, Path) else "-"
    subprocess.run(["docker", "import", "--change", f"LABEL {INPUTS_LABEL}={inputs}", src, name],
                   input=None if isinstance(tar_bytes, Path) else tar_bytes, check=True,
                   stdout=subprocess.DEVNULL)


def _build(client: docker.DockerClient, name: str, dockerfile: str, inputs: str,
           context: Path | None = None) -> None:
    dockerfile += f"\nLABEL {INPUTS_LABEL}={inputs}\n"
    if context is None:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True, pull=False)
        return
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(context, arcname=".")
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=name, rm=True, pull=False)


def busybox_rootfs() -> bytes:
    """A tar of the static busybox with its applet links plus the service stand-in scripts."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ["bin", "tmp", "www", "etc", "standin", "export", "data"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        tar.add(HTTPD_CONF, arcname="etc/httpd.conf")
        for name, text in {"etc/passwd": "root:x:0:0:root:/:/bin/sh\n", "etc/group": "root:x:0:\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
        for script in (STANDINS / "service").iterdir():
            if script.name != "README.md":
                tar.add(script, arcname=f"standin/{script.name}")
    return buf.getvalue()


def _service_dockerfile(service: str, version: str, broken: bool) -> str:
    # Like the real images: no HEALTHCHECK and no health label (the compose files label the
    # services from 3.0); the health path is the one the real service serves on :8080.
    env = {"STANDIN_SERVICE": service, "MENDER_VERSION": version}
    health = INTERNAL_HEALTH_PATHS.get(service)
    if health:
        env["STANDIN_HEALTH_PATH"] = health
    if service in MENDER_SERVICES or service in _ENTERPRISE_MONGO_SERVICES or service == "mender-api-gateway":
        env["STANDIN_NEEDS_MONGO"] = "1"
    if broken:
        env["STANDIN_BROKEN"] = "1"
    return "\n".join([f"FROM {BUSYBOX_BASE}",
                      "ENV " + " ".join(f'{k}="{v}"' for k, v in env.items()),
                      'ENTRYPOINT ["/standin/service"]'])


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (this machine reaches no other)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file():
            m = re.search(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)\s*$", f.read_text(), re.M)
            if m:
                return m.group(1)
    raise SandboxError("no Debian mirror found in /etc/apt/sources.list*; cannot build the mongo stand-in")


def _python_base(client: docker.DockerClient, log) -> None:
    requirements = STANDINS / "mongo" / "requirements.txt"
    inputs = _digest("trixie-minbase-python3", requirements.read_bytes())
    if _current(client, PYTHON_BASE, inputs):
        return
    log("building the Python 3.13 base of the mongo stand-in (debootstrap trixie, ~1 min)")
    with tempfile.TemporaryDirectory(prefix="standin-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,ca-certificates",
                        "trixie", str(root), debian_mirror()], check=True, capture_output=True)
        python313 = _python313()
        subprocess.run([python313, "-m", "pip", "install", "-q", "--no-compile", "--target",
                        str(root / "opt/standin/lib"), "-r", str(requirements)], check=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        _import_rootfs(client, tar, PYTHON_BASE, inputs)


def _python313() -> str:
    """A real Python 3.13 interpreter (pyenv shims answer for versions they do not run)."""
    candidates = [str(Path.home() / ".pyenv/versions/3.13.0/bin/python3.13")]
    out = subprocess.run(["pyenv", "prefix", "3.13.0"], capture_output=True, text=True) if shutil.which("pyenv") else None
    if out and out.returncode == 0:
        candidates.insert(0, str(Path(out.stdout.strip()) / "bin" / "python3"))
    candidates.append(shutil.which("python3.13") or "")
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 13)"],
                                        capture_output=True).returncode == 0:
            return candidate
    raise SandboxError("Python 3.13 is needed to install the mongo stand-in's packages (mongoeco needs >= 3.13)")


def _mongo_dockerfile(version: str) -> str:
    return "\n".join([
        f"FROM {PYTHON_BASE}",
        "COPY mongo_standin_server.py /opt/standin/",
        "COPY mongo_standin_tools.py /opt/standin/lib/",
        "COPY mongodump mongorestore /usr/local/bin/",
        f'ENV PYTHONPATH=/opt/standin/lib MONGO_VERSION="{version}" PYTHONUNBUFFERED=1',
        "VOLUME /data/db",
        "EXPOSE 27017",
        # No HEALTHCHECK: the real mongo images have none, so the tool sees "running" only and
        # must wait for the port itself (mender_upgrade.tasks.mongo.wait_for_mongo), as on a real server.
        'ENTRYPOINT ["python3", "/opt/standin/mongo_standin_server.py"]',
    ])


def build_images(client: docker.DockerClient, log=print, versions: list[str] | None = None,
                 extra_images: list[str] = ()) -> list[str]:
    """Build (or reuse) every stand-in image of the fixture's runnable releases plus
    `extra_images` (names the real compose files use); returns the image names."""
    service_inputs = _digest(STANDINS / "service", HTTPD_CONF.read_bytes())
    if not _current(client, BUSYBOX_BASE, service_inputs):
        log("importing the busybox base of the service stand-ins")
        _import_rootfs(client, busybox_rootfs(), BUSYBOX_BASE, service_inputs)
    _python_base(client, log)
    wanted: dict[str, tuple[str, str, bool]] = {}
    for version in [*(versions or RUNNABLE_VERSIONS), BROKEN_VERSION]:
        for service, image in Release(version).images().items():
            if service != "mender-mongo":
                broken = version == BROKEN_VERSION and service == "mender-deployments"
                wanted.setdefault(image, (service, version, broken))
    for image in extra_images:
        if (service_version := mender_service(image)) is not None:
            wanted.setdefault(image, (*service_version, False))
    # The recipe of a gateway, minio, nats or gui image follows from its name alone, whichever
    # stack names it: one image per name.
    infra = sorted({image for image in [*wanted, *extra_images] if infra_recipe(image) is not None})
    names: list[str] = []
    for image, (service, version, broken) in sorted(wanted.items()):
        if image in infra:
            continue
        dockerfile = _service_dockerfile(service, version, broken)
        _build_if_changed(client, image, dockerfile, _digest(service_inputs, dockerfile), None, log)
        names.append(image)
    bases = {"busybox": BUSYBOX_BASE, "python": PYTHON_BASE}
    for image in infra:
        recipe = infra_recipe(image)
        dockerfile = recipe.dockerfile(bases[recipe.base])
        inputs = _digest(INFRA, dockerfile, client.images.get(bases[recipe.base]).id)
        _build_if_changed(client, image, dockerfile, inputs, INFRA, log)
        names.append(image)
    mongo_inputs = _digest(STANDINS / "mongo")
    for image, version in MONGO_VERSIONS.items():
        dockerfile = _mongo_dockerfile(version)
        inputs = _digest(mongo_inputs, dockerfile, client.images.get(PYTHON_BASE).id)
        _build_if_changed(client, image, dockerfile, inputs, STANDINS / "mongo", log)
        names.append(image)
    return names


def _build_if_changed(client: docker.DockerClient, image: str, dockerfile: str, inputs: str,
                      context: Path | None, log) -> None:
    if not _current(client, image, inputs):
        log(f"building stand-in {image}")
        _build(client, image, dockerfile, inputs, context=context)


def mirror_name(image: str) -> str:
    """`mongo:4.4` -> `127.0.0.1:5000/library/mongo:4.4`: where the Docker Hub mirror looks."""
    repo = image if "/" in image.split(":")[0] else f"library/{image}"
    return f"127.0.0.1:{REGISTRY_PORT}/{repo}"


def is_docker_hub_name(image: str) -> bool:
    """`mongo:4.4`, `minio/minio:…` are Docker Hub names; `registry.mender.io/…` names another
    registry (its first part has a dot or a port), which no Docker Hub mirror serves."""
    first, _, rest = image.partition("/")
    return not rest or not ("." in first or ":" in first or first == "localhost")


def publish_to_mirror(client: docker.DockerClient, images: list[str], log=print) -> None:
    """Push each image with a Docker Hub name under its Docker Hub path to the local registry
    (the dockerd mirror). The others (Enterprise's `registry.mender.io/…`) stay local images only:
    dockerd mirrors Docker Hub alone, as a real host without `docker login` to that registry
    has them only when they were loaded."""
    images = [image for image in images if is_docker_hub_name(image)]
    pushed = 0
    for image in images:
        target = mirror_name(image)
        if _mirror_has(target, client.images.get(image).id):
            continue
        pushed += 1
        client.images.get(image).tag(target)
        for line in client.images.push(target, stream=True, decode=True):
            if "error" in line:
                raise SandboxError(f"pushing {target} failed: {line['error']}")
        client.images.remove(target, noprune=True)
    log(f"published {pushed} of {len(images)} images to the registry mirror (the rest were there)")


def _mirror_has(target: str, image_id: str) -> bool:
    """The registry already serves `target` with this image's config (same image id)."""
    import urllib.request
    repo, tag = target.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(f"http://127.0.0.1:{REGISTRY_PORT}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r).get("config", {}).get("digest") == image_id
    except OSError:
        return False


def registry_catalog() -> list[str]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{REGISTRY_PORT}/v2/_catalog?n=1000", timeout=5) as r:
        return json.load(r)["repositories"]
