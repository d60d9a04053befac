"""A fixture release's compose files: base, storage, extra, enterprise, clients, other components."""

from __future__ import annotations

from mender_upgrade.sandbox.release_layout import _BACKEND, _ENTERPRISE_IMAGES, _HEALTH_CHECKED, _NATS_URL, Tree, _vkey, _yaml
from mender_upgrade.sandbox.releases import MINIO_IMAGE, Release
from mender_upgrade.tasks.service_health import INTERNAL_HEALTH_PATHS


def pinned_images(version: str, pin: str) -> dict[str, str]:
    """`Release(version).images()` with the `mender-<version>` tags replaced by `mender-<pin>`.

    `pin` is what the version lines of a commit say: the release itself on a release commit,
    `master` on master, `2.7.0b1` on a pre-release commit.
    """
    old = f":mender-{version}"
    return {
        svc: img.removesuffix(old) + f":mender-{pin}" if img.endswith(old) else img
        for svc, img in Release(version).images().items()
    }


def _traefik_labels(route: str) -> list[str]:
    rule = f"PathPrefix(`/api/management/{{version:v[0-9]+}}/{route}`)"
    return [
        "traefik.enable=true",
        f"traefik.http.routers.{route}.entrypoints=https",
        f"traefik.http.routers.{route}.rule={rule}",
        f"traefik.http.routers.{route}.tls=true",
        f"traefik.http.services.{route}.loadbalancer.server.port=8080",
    ]


_TRAEFIK_ENTRYPOINTS = [
    "--accesslog=true",
    "--entrypoints.http.address=:80",
    "--entrypoints.https.address=:443",
    "--entryPoints.https.transport.respondingTimeouts.idleTimeout=7200",
    "--entryPoints.https.transport.respondingTimeouts.readTimeout=7200",
    "--entryPoints.https.transport.respondingTimeouts.writeTimeout=7200",
    "--entrypoints.http.http.redirections.entryPoint.to=https",
    "--entrypoints.http.http.redirections.entryPoint.scheme=https",
]
_TRAEFIK_27_COMMAND = [
    "--accesslog=true",
    "--providers.file.filename=/config/tls.toml",
    "--providers.docker=true",
    "--providers.docker.exposedbydefault=false",
    *_TRAEFIK_ENTRYPOINTS[1:],
]
_TRAEFIK_CONFIG_FILES = ("traefik.yaml", "traefik.middlewares.yaml", "traefik.tls.yaml")


def _gateway_service(version: str, image: str, backends: list[str]) -> dict[str, object]:
    v = _vkey(version)
    svc: dict[str, object] = {"image": image, "restart": "on-failure"}
    if (2, 7) <= v < (3, 0):
        svc["command"] = _TRAEFIK_27_COMMAND
        svc["volumes"] = ["/var/run/docker.sock:/var/run/docker.sock:ro"]
    elif v >= (3, 0):
        svc["command"] = [*_TRAEFIK_ENTRYPOINTS, "--providers.file.directory=/etc/traefik/config"]
        svc["volumes"] = [
            f"./config/traefik/{name}:/etc/traefik/config/{name}:ro" for name in _TRAEFIK_CONFIG_FILES
        ]
    svc["networks"] = ["mender"]
    svc["depends_on"] = backends
    return svc


def _backend_service(version: str, name: str, image: str) -> dict[str, object]:
    v = _vkey(version)
    route, env = _BACKEND[name]
    env = dict(env)
    depends = ["mender-mongo"]
    if name == "mender-workflows-server" and Release(version).nats_image:
        env["WORKFLOWS_NATS_URI"] = _NATS_URL
        depends.append("mender-nats")
    # The real files label the API services with their health path from 3.0 on (2.6/2.7: none).
    labels = [f"mender.healthcheck.path={INTERNAL_HEALTH_PATHS[name]}"] if v >= (3, 0) else []
    if (2, 7) <= v < (3, 0) and name in _HEALTH_CHECKED:
        labels += _traefik_labels(route)
    svc: dict[str, object] = {
        "image": image, "restart": "on-failure", "networks": ["mender"], "depends_on": depends,
        "environment": env,
    }
    if labels:
        svc["labels"] = labels
    return svc


def _compose_base(version: str, pin: str) -> str:
    images = pinned_images(version, pin)
    backends = [name for name in _BACKEND if name in images]
    services: dict[str, object] = {name: _backend_service(version, name, images[name]) for name in backends}
    services["mender-api-gateway"] = _gateway_service(version, images["mender-api-gateway"], backends)
    if "mender-nats" in images:
        services["mender-nats"] = {
            "image": images["mender-nats"], "restart": "on-failure", "command": ["-js"], "networks": ["mender"],
        }
    if "mender-reporting" in images:
        services["mender-reporting"] = {
            "image": images["mender-reporting"], "restart": "on-failure", "networks": ["mender"],
            "depends_on": ["mender-opensearch", "mender-nats"],
            "environment": {
                "REPORTING_OPENSEARCH_ADDRESSES": "http://mender-opensearch:9200",
                "REPORTING_NATS_URI": _NATS_URL,
            },
        }
        services["mender-opensearch"] = {
            "image": images["mender-opensearch"], "restart": "on-failure", "networks": ["mender"],
            "environment": {
                "discovery.type": "single-node",
                "plugins.security.disabled": "true",
                "OPENSEARCH_JAVA_OPTS": "-Xms512m -Xmx512m",
            },
        }
    services["mender-mongo"] = {"image": images["mender-mongo"], "restart": "on-failure", "networks": ["mender"]}
    return _yaml({"version": "2.1", "services": services, "networks": {"mender": None}})


def _storage_uri(version: str) -> str:
    v = _vkey(version)
    if v < (2, 7):
        return "https://s3.docker.mender.io:9000"
    return "https://s3.docker.mender.io" if v < (3, 3) else "http://minio:9000"


def _compose_storage(version: str, pin: str) -> str:
    images = pinned_images(version, pin)
    services: dict[str, object] = {
        "minio": {
            "image": MINIO_IMAGE, "restart": "on-failure",
            "networks": {"mender": {"aliases": ["minio.s3.docker.mender.io"]}},
            "command": "server /export",
        },
    }
    if "storage-proxy" in images:
        services["storage-proxy"] = {
            "image": images["storage-proxy"], "restart": "on-failure",
            "networks": {"mender": {"aliases": ["s3.docker.mender.io"]}},
            "depends_on": ["minio"],
        }
    services["mender-deployments"] = {
        "depends_on": ["minio"],
        "environment": {
            "DEPLOYMENTS_AWS_AUTH_KEY": "minio",
            "DEPLOYMENTS_AWS_AUTH_SECRET": "minio123",
            "DEPLOYMENTS_AWS_URI": _storage_uri(version),
        },
    }
    return _yaml({"version": "2.1", "services": services})


def _extra_compose_file(version: str) -> str | None:
    """The extra compose file `run` adds for Enterprise: connect (2.6), config (2.7-3.1)."""
    v = _vkey(version)
    if (2, 6) <= v < (2, 7):
        return "docker-compose.connect.yml"
    if (2, 7) <= v < (3, 2):
        return "docker-compose.config.yml"
    return None


def _compose_extra(version: str, pin: str) -> str:
    component = "deviceconnect" if _extra_compose_file(version) == "docker-compose.connect.yml" else "deviceconfig"
    service = {
        "image": f"mendersoftware/{component}:mender-{pin}", "restart": "on-failure",
        "networks": ["mender"], "depends_on": ["mender-mongo"],
    }
    if _vkey(version) >= (3, 0):
        service["labels"] = [f"mender.healthcheck.path={INTERNAL_HEALTH_PATHS[f'mender-{component}']}"]
    return _yaml({"version": "2.1", "services": {f"mender-{component}": service}})


def _compose_enterprise(pin: str) -> str:
    registry = "registry.mender.io/mendersoftware"
    services: dict[str, dict[str, object]] = {
        svc: {"image": f"{registry}/{repo}:mender-{pin}"} for svc, repo in _ENTERPRISE_IMAGES.items()
    }
    services["mender-useradm"]["environment"] = {"USERADM_TENANTADM_ADDR": "http://mender-tenantadm:8080"}
    for name in ("tenantadm", "auditlogs"):
        services[f"mender-{name}"] = {
            "image": f"{registry}/{name}:mender-{pin}", "restart": "on-failure",
            "networks": ["mender"], "depends_on": ["mender-mongo"],
        }
    return _yaml({"version": "2.1", "services": services})


def _compose_clients(pin: str) -> Tree:
    client = {
        "image": f"mendersoftware/mender-client-qemu:mender-{pin}",
        "networks": ["mender"], "stdin_open": True, "tty": True, "privileged": True,
    }
    docker_client = {
        "image": f"mendersoftware/mender-client-docker:mender-{pin}",
        "networks": ["mender"], "environment": {"SERVER_URL": "https://docker.mender.io"},
    }
    return {
        "docker-compose.client.yml": (_yaml({"version": "2.1", "services": {"mender-client": client}}), False),
        "docker-compose.docker-client.yml": (
            _yaml({"version": "2.1", "services": {"mender-client-docker": docker_client}}), False),
    }


def _other_components(pin: str) -> str:
    services = {
        name: {"image": f"mendersoftware/{name}:mender-{pin}"}
        for name in ("mender-artifact", "mender-cli", "gui", "mender-client-docker-addons")
    }
    header = "# Components released together with the backend, but not run by it.\n"
    return _yaml({"version": "2.1", "services": services}, header)
