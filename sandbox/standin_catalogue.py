"""Which stand-in each real image name gets: one recipe per name, for the fixture and the real stack.

The real compose files (read with the clone's own `./run config`) name Mender service images,
gateways (openresty api-gateway up to 2.6, traefik from 2.7), 2.6's storage-proxy (openresty),
minio, nats, the gui and mongo; Enterprise adds its service images from `registry.mender.io`
(`docker-compose.enterprise.yml`) and redis. The recipe depends on the image name only, so a name the
fixture repository also uses is the same image in both stacks (the input-hash label decides
rebuilds; two recipes under one name would rebuild it on every switch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mender_upgrade.sandbox.home import STANDINS
from mender_upgrade.sandbox.processes import SandboxError
from mender_upgrade.tasks.containers import config_images

INFRA = STANDINS / "infra"
# mendersoftware/<repository> -> the compose service that runs it
MENDER_SERVICE_OF = {
    "deployments": "mender-deployments", "deviceauth": "mender-device-auth",
    "inventory": "mender-inventory", "useradm": "mender-useradm",
    "workflows": "mender-workflows-server", "workflows-worker": "mender-workflows-worker",
    "create-artifact-worker": "mender-create-artifact-worker", "deviceconnect": "mender-deviceconnect",
    "deviceconfig": "mender-deviceconfig", "iot-manager": "mender-iot-manager",
}
# registry.mender.io/mendersoftware/<repository> -> the compose service `docker-compose.enterprise.yml`
# runs it as: the Enterprise builds of the services above, and the Enterprise-only services.
ENTERPRISE_REGISTRY = "registry.mender.io/mendersoftware"
ENTERPRISE_SERVICE_OF = {
    "deployments-enterprise": "mender-deployments", "deviceauth-enterprise": "mender-device-auth",
    "inventory-enterprise": "mender-inventory", "useradm-enterprise": "mender-useradm",
    "workflows-enterprise": "mender-workflows-server", "workflows-enterprise-worker": "mender-workflows-worker",
    "tenantadm": "mender-tenantadm", "auditlogs": "mender-auditlogs", "devicemonitor": "mender-devicemonitor",
    "generate-delta-worker": "mender-generate-delta-worker",
}
_GATEWAY_KINDS = {"mendersoftware/api-gateway": "api-gateway", "traefik": "traefik",
                  "openresty/openresty": "storage-proxy"}
# minio images up to 2019 carry their own HEALTHCHECK (`healthcheck` binary, 1 min interval);
# the 2021 image has none: its compose file adds one (curl, 60 s).
_MINIO_OWN_HEALTHCHECK = re.compile(r"RELEASE\.(2018|2019)-")
# The gui image's own HEALTHCHECK (wget of 127.0.0.1, 120 s start period).
_GUI_HEALTHCHECK = ("HEALTHCHECK --interval=8s --timeout=15s --start-period=120s --retries=128 "
                    'CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/ui/"]')


@dataclass(frozen=True)
class InfraRecipe:
    """A stand-in built FROM one of the two bases with files from tests/standins/infra."""
    base: str  # "busybox" or "python"
    dockerfile_lines: tuple[str, ...]
    files: tuple[str, ...]

    def dockerfile(self, base_image: str) -> str:
        copies = [f"COPY {name} /standin-infra/{name}" for name in self.files]
        return "\n".join([f"FROM {base_image}", *copies, *self.dockerfile_lines])


def split_image(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    return repo, tag


def mender_service(image: str) -> tuple[str, str] | None:
    """`mendersoftware/deployments:mender-2.7.2` -> ("mender-deployments", "2.7.2");
    `registry.mender.io/mendersoftware/tenantadm:mender-3.7.11` -> ("mender-tenantadm", "3.7.11")."""
    repo, tag = split_image(image)
    owner, _, name = repo.rpartition("/")
    known = {"mendersoftware": MENDER_SERVICE_OF, ENTERPRISE_REGISTRY: ENTERPRISE_SERVICE_OF}.get(owner, {})
    if name in known and tag.startswith("mender-"):
        return known[name], tag.removeprefix("mender-")
    return None


def infra_recipe(image: str) -> InfraRecipe | None:
    """The stand-in recipe of a non-service image (gateway, minio, nats, redis, gui), or None."""
    repo, tag = split_image(image)
    if repo in _GATEWAY_KINDS:
        return InfraRecipe("python", (f'ENV STANDIN_GATEWAY="{_GATEWAY_KINDS[repo]}" PYTHONUNBUFFERED=1',
                                      "EXPOSE 80 443" if repo != "openresty/openresty" else "EXPOSE 9000",
                                      'ENTRYPOINT ["python3", "/standin-infra/gateway.py"]'), ("gateway.py",))
    if repo == "minio/minio":
        lines = ["RUN ln -s /standin-infra/curl /usr/bin/curl && ln -s /standin-infra/healthcheck /usr/bin/healthcheck",
                 "ENV PYTHONUNBUFFERED=1", "EXPOSE 9000",
                 'ENTRYPOINT ["python3", "/standin-infra/minio.py"]']
        if _MINIO_OWN_HEALTHCHECK.search(tag):
            lines.append("HEALTHCHECK --interval=1m CMD healthcheck")
        return InfraRecipe("python", tuple(lines), ("minio.py", "curl", "healthcheck"))
    if repo == "redis":
        # Like the official image: RESP on 6379, the data directory a VOLUME, no HEALTHCHECK.
        return InfraRecipe("python", ("ENV PYTHONUNBUFFERED=1", "VOLUME /data", "EXPOSE 6379",
                                      'ENTRYPOINT ["python3", "/standin-infra/redis.py"]'), ("redis.py",))
    if repo == "nats":
        return InfraRecipe("busybox", ("EXPOSE 4222", 'ENTRYPOINT ["/standin-infra/nats"]'),
                           ("nats", "nats-greeting"))
    if repo == "mendersoftware/gui" and tag.startswith("mender-"):
        return InfraRecipe("busybox", ("EXPOSE 80", _GUI_HEALTHCHECK, 'ENTRYPOINT ["/standin-infra/gui"]'),
                           ("gui",))
    return None


def has_standin(image: str, mongo_images: set[str]) -> bool:
    return image in mongo_images or mender_service(image) is not None or infra_recipe(image) is not None


def compose_images(config_yaml: str) -> dict[str, str]:
    """service -> image from `./run config` output."""
    out = config_images(config_yaml)
    missing = sorted(name for name, image in out.items() if not image)
    if missing:
        raise SandboxError(f"the compose files define services without an image: {', '.join(missing)}")
    return {name: image for name, image in out.items() if image}


def missing_standins(images: dict[str, str], mongo_images: set[str]) -> list[str]:
    return sorted({image for image in images.values() if not has_standin(image, mongo_images)})
