"""Which Mender releases the sandbox models, and which images each one's compose files name.

The fixture repository (`integration_fixture.py`) writes compose files from this table and the
image builder (`images.py`) builds stand-ins for every image a *runnable* release names, with
exactly the Docker-Hub names and tags the real files use (one image per name, shared with the
real-repository stack: `standin_catalogue.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Every stable tag the fixture repository carries (per minor, ascending).
FIXTURE_TAGS: dict[str, list[str]] = {
    "2.5": ["2.5.0", "2.5.1"],
    "2.6": ["2.6.0", "2.6.1", "2.6.2", "2.6.3", "2.6.4"],
    "2.7": ["2.7.0", "2.7.1", "2.7.2"],
    "3.0": ["3.0.0", "3.0.1", "3.0.2"],
    "3.1": ["3.1.0", "3.1.1"],
    "3.2": ["3.2.0", "3.2.1", "3.2.2"],
    "3.3": ["3.3.0", "3.3.1", "3.3.2"],
    "3.4": ["3.4.0"],
    "3.5": ["3.5.0", "3.5.1"],
    "3.6": ["3.6.0", "3.6.1", "3.6.2", "3.6.3", "3.6.4", "3.6.5"],
    "3.7": ["3.7.0", "3.7.1", "3.7.10", "3.7.11"],
    "3.8": ["3.8.0", "3.8.5"],
}

# Tags a real clone carries that every version logic must ignore.
IGNORED_TAGS = ["2.7.0b1", "3.0.3-build3", "3.4.1-build1", "saas-v2023.01.01", "internal-2.6"]

# Releases whose stand-in images are built, so the sandbox can run them.
RUNNABLE_VERSIONS = ["2.6.4", "2.7.2", "3.0.2", "3.6.5", "3.7.11"]

# A release that exists only when a test adds it (`integration_fixture.add_broken_release`):
# its deployments image never becomes healthy, to exercise rollback.
BROKEN_VERSION = "2.7.3"

MENDER_SERVICES = {
    # compose service name -> Docker Hub repository
    "mender-deployments": "mendersoftware/deployments",
    "mender-device-auth": "mendersoftware/deviceauth",
    "mender-inventory": "mendersoftware/inventory",
    "mender-useradm": "mendersoftware/useradm",
    "mender-workflows-server": "mendersoftware/workflows",
}
MINIO_IMAGE = "minio/minio:RELEASE.2021-04-22T15-44-28Z"
STORAGE_PROXY_IMAGE = "openresty/openresty:1.13.6.2-0-alpine"  # as in 2.6.x's real files


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class Release:
    version: str

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def mongo_image(self) -> str:
        return "mongo:5.0" if _key(self.version) >= (3, 7) else "mongo:4.4"

    @property
    def gateway_image(self) -> str:
        v = _key(self.version)
        if v < (2, 7):
            return f"mendersoftware/api-gateway:mender-{self.version}"
        if v < (3, 1):
            return "traefik:v2.4"  # the real 2.7.2 and 3.0.2 files
        if v < (3, 6):
            return "traefik:v2.5"
        return "traefik:v2.8" if v < (3, 7) else "traefik:v2.10"  # real 3.6.5, 3.7.11

    @property
    def has_storage_proxy(self) -> bool:
        return _key(self.version) < (2, 7)

    @property
    def has_reporting(self) -> bool:
        """3.5 added reporting + opensearch; 3.6 removed them again."""
        return (3, 5) <= _key(self.version) < (3, 6)

    @property
    def nats_image(self) -> str | None:
        v = _key(self.version)
        if v < (3, 0):
            return None
        return "nats:2.1.9-alpine3.12" if v < (3, 6) else "nats:2.7.4-scratch"  # the real files' tags

    def images(self) -> dict[str, str]:
        """compose service -> image, for every service this release's compose files define."""
        out = {svc: f"{repo}:mender-{self.version}" for svc, repo in MENDER_SERVICES.items()}
        out["mender-api-gateway"] = self.gateway_image
        out["mender-mongo"] = self.mongo_image
        out["minio"] = MINIO_IMAGE
        if self.has_storage_proxy:
            out["storage-proxy"] = STORAGE_PROXY_IMAGE
        if self.nats_image:
            out["mender-nats"] = self.nats_image
        if self.has_reporting:
            out["mender-reporting"] = f"mendersoftware/reporting:mender-{self.version}"
            out["mender-opensearch"] = "opensearchproject/opensearch:2.4.0"
        return out


def all_fixture_tags() -> list[str]:
    return [t for tags in FIXTURE_TAGS.values() for t in tags]
