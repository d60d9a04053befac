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
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import git

from sandbox.releases import BROKEN_VERSION, FIXTURE_TAGS, IGNORED_TAGS, MINIO_IMAGE, Release
from tasks.service_health import INTERNAL_HEALTH_PATHS

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

_MONGO_URL = "mongodb://mender-mongo:27017"
_NATS_URL = "nats://mender-nats:4222"

# compose service -> (route/health name, extra environment); the backend services of every era
_BACKEND: dict[str, tuple[str, dict[str, str]]] = {
    "mender-workflows-server": ("workflows", {"WORKFLOWS_MONGO_URL": _MONGO_URL}),
    "mender-useradm": ("useradm", {"USERADM_MONGO": _MONGO_URL}),
    "mender-device-auth": (
        "devauth",
        {"DEVICEAUTH_MONGO": _MONGO_URL,
         "DEVICEAUTH_ORCHESTRATOR_ADDR": "http://mender-workflows-server:8080/"},
    ),
    "mender-inventory": (
        "inventory",
        {"INVENTORY_MONGO": _MONGO_URL,
         "INVENTORY_ORCHESTRATOR_ADDR": "http://mender-workflows-server:8080/"},
    ),
    "mender-deployments": (
        "deployments",
        {"DEPLOYMENTS_MONGO_URL": _MONGO_URL, "DEPLOYMENTS_MIDDLEWARE": "prod",
         "DEPLOYMENTS_INVENTORY_ADDR": "http://mender-inventory:8080/"},
    ),
}
_HEALTH_CHECKED = ("mender-deployments", "mender-device-auth", "mender-inventory", "mender-useradm")
_ENTERPRISE_IMAGES = {
    "mender-deployments": "deployments-enterprise",
    "mender-device-auth": "deviceauth-enterprise",
    "mender-inventory": "inventory-enterprise",
    "mender-useradm": "useradm-enterprise",
    "mender-workflows-server": "workflows-enterprise",
}

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

# path -> (content, executable)
Tree = dict[str, tuple[str, bool]]


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


_PLAIN_SCALAR = re.compile(r"[A-Za-z/.][A-Za-z0-9/._:+=-]*( [A-Za-z0-9/._:+=-]+)*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: object) -> str:
    """A YAML scalar: plain when unambiguous, else single-quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain = _PLAIN_SCALAR.fullmatch(text) and ": " not in text and not text.endswith(":")
    if plain and text.lower() not in _YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


def _yaml_lines(node: dict[str, object] | list[object], pad: str, step: str) -> list[str]:
    lines: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _yaml_lines(value, pad + step, step)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(value)}".rstrip())
        return lines
    for item in node:
        if isinstance(item, dict):
            first, *rest = _yaml_lines(item, pad + "  ", step)
            lines += [f"{pad}- {first.lstrip()}", *rest]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _yaml(doc: dict[str, object], header: str = "", indent: int = 4) -> str:
    """Block-style YAML of plain data (dicts, lists, str, int, bool, None), keys in order."""
    return header + "\n".join(_yaml_lines(doc, "", " " * indent)) + "\n"


# --- compose files ---------------------------------------------------------------------------


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


# --- scripts ---------------------------------------------------------------------------------


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


_RUN = """\
#!/bin/bash
set -e

../verify-docker-versions

# Pass this value on to the GUI container as an env variable
export INTEGRATION_VERSION=$(git describe --tags --abbrev=0)
# Parse the Mender-Artifact version used from the other-components.yml file's image tag
export MENDER_ARTIFACT_VERSION=$(awk -F':' '/mendersoftware\\/mender-artifact/ {print $3}' ../other-components.yml)

ENTERPRISE_DOCKER_COMPOSE=
ENTERPRISE_PROD=
if [ -f ./config/enterprise.yml ]; then
    ENTERPRISE_DOCKER_COMPOSE="@ENTERPRISE_FILES@"
    ENTERPRISE_PROD="-f ./config/enterprise.yml"
fi
@PROBE@
exec @COMPOSE@ \\
     -p menderproduction \\
     -f ../docker-compose.yml \\
     -f ../docker-compose.storage.minio.yml \\
     $ENTERPRISE_DOCKER_COMPOSE \\
     -f ./config/prod.yml \\
     $ENTERPRISE_PROD \\
     "$@"
"""
_RUN_PROBE = """
if docker compose version >/dev/null 2>&1; then
    DOCKER_COMPOSE="docker compose"
else
    DOCKER_COMPOSE="docker-compose"
fi
"""


def _run_script(version: str) -> str:
    extra = _extra_compose_file(version)
    files = ([extra] if extra else []) + ["docker-compose.enterprise.yml"]
    probe = _vkey(version) >= (3, 6)
    return _fill(
        _RUN,
        ENTERPRISE_FILES=" ".join(f"-f ../{name}" for name in files),
        PROBE=_RUN_PROBE if probe else "",
        COMPOSE="$DOCKER_COMPOSE" if probe else "docker-compose",
    )


_VERIFY = """\
#!/bin/bash
set -o pipefail

# Assuming docker minor and patch version backward-compatibility.
# Docker Compose major versions this release works with: @MAJORS@ (1.x from 1.6 on).

VERSION_MINOR_MIN_DOCKER_ENGINE="11"
VERSION_MINOR_MIN_DOCKER_COMPOSE="6"
SUPPORTED_COMPOSE_MAJORS="@MAJORS@"

# test Docker Engine version

DOCKER_ENGINE_VERSION_STRING=$(docker info 2>/dev/null | grep "Server Version")
if [[ -z $DOCKER_ENGINE_VERSION_STRING ]]; then
    echo "ERROR: 'docker info' failed (hint: is the Docker Engine running, may you use it?)."
    exit 1
fi
DOCKER_ENGINE_VERSION_OLD_SCHEME_REGEX="Server Version: 1\\.([0-9]+)\\.[0-9]+"
if [[ $DOCKER_ENGINE_VERSION_STRING =~ $DOCKER_ENGINE_VERSION_OLD_SCHEME_REGEX ]]; then
    if [ "${BASH_REMATCH[1]}" -lt "$VERSION_MINOR_MIN_DOCKER_ENGINE" ]; then
        echo "ERROR: Docker Engine must be on version 1.$VERSION_MINOR_MIN_DOCKER_ENGINE or larger."
        echo "DOCKER_ENGINE_VERSION_STRING=$DOCKER_ENGINE_VERSION_STRING"
        exit 1
    fi
fi

# test Docker Compose version
@PROBE@
DOCKER_COMPOSE_VERSION=${DOCKER_COMPOSE_VERSION_STRING#v}
DOCKER_COMPOSE_VERSION_MAJOR=${DOCKER_COMPOSE_VERSION%%.*}
DOCKER_COMPOSE_VERSION_MINOR=$(echo "$DOCKER_COMPOSE_VERSION" | cut -d. -f2)

if [[ -z $DOCKER_COMPOSE_VERSION_MAJOR ]]; then
    echo "ERROR: Actual version is empty (hint: is it installed, or version format change?)."
    exit 1
fi
if [[ " $SUPPORTED_COMPOSE_MAJORS " != *" $DOCKER_COMPOSE_VERSION_MAJOR "* ]]; then
    echo "ERROR: Unsupported major version: v$DOCKER_COMPOSE_VERSION_MAJOR"
    echo "DOCKER_COMPOSE_VERSION_STRING=$DOCKER_COMPOSE_VERSION_STRING"
    exit 1
fi
if [ "$DOCKER_COMPOSE_VERSION_MAJOR" = "1" ] \\
        && [ "$DOCKER_COMPOSE_VERSION_MINOR" -lt "$VERSION_MINOR_MIN_DOCKER_COMPOSE" ]; then
    echo "ERROR: Docker Compose must be on version 1.$VERSION_MINOR_MIN_DOCKER_COMPOSE or larger."
    echo "DOCKER_COMPOSE_VERSION_STRING=$DOCKER_COMPOSE_VERSION_STRING"
    exit 1
fi

exit 0
"""
_VERIFY_PROBE_V1 = "DOCKER_COMPOSE_VERSION_STRING=$(docker-compose version --short)\n"
_VERIFY_PROBE_V2 = """\
if docker compose version >/dev/null 2>&1; then
    DOCKER_COMPOSE_VERSION_STRING=$(docker compose version --short)
else
    DOCKER_COMPOSE_VERSION_STRING=$(docker-compose version --short)
fi
"""


def supported_compose_majors(version: str) -> tuple[int, ...]:
    """Docker Compose major versions the release's `verify-docker-versions` accepts."""
    v = _vkey(version)
    if v >= (3, 8, 5):
        return (1, 2, 5)
    v2_from = {(2, 6): (2, 6, 4), (3, 0): (3, 0, 2), (3, 1): (3, 1, 1)}
    if v >= (3, 2) or v >= v2_from.get(v[:2], (99,)):
        return (1, 2)
    return (1,)


def _verify_script(version: str) -> str:
    return _fill(
        _VERIFY,
        MAJORS=" ".join(str(m) for m in supported_compose_majors(version)),
        PROBE=_VERIFY_PROBE_V2 if _vkey(version) >= (3, 6) else _VERIFY_PROBE_V1,
    )


_DUMP_DB = """\
#!/bin/bash -e

SELFDIR=$(dirname "$(readlink -f "$0")")
SCRIPT=${SCRIPT:=./run}

SERVICES="@SERVICES@"
DB_SERVICES="mender-mongo"

# stop service that are using DBs
# shellcheck disable=SC2086
${SCRIPT} stop ${SERVICES}

# make sure that DB services are up
# shellcheck disable=SC2086
${SCRIPT} start ${DB_SERVICES}

# @ACTION@
# shellcheck disable=SC2016
DUMP_PATH=$PWD ${SCRIPT} -f "${SELFDIR}/migration-helper.yml" \\
         run \\
         --rm \\
         -e DB_SERVICES="${DB_SERVICES}" \\
         mongo-helper \\
         sh -c 'for s in ${DB_SERVICES}; do @COMMAND@; done'
"""


def _migration_files(version: str) -> Tree:
    images = Release(version).images()
    services = " ".join(name for name in [*_BACKEND, "mender-reporting"] if name in images)
    helper = {"image": images["mender-mongo"], "networks": ["mender"], "volumes": ["${DUMP_PATH}:/srv"]}
    dump = _fill(_DUMP_DB, SERVICES=services, ACTION="dump DB",
                 COMMAND='mongodump -h "$s" --out "/srv/db-dump/$s"')
    restore = _fill(_DUMP_DB, SERVICES=services, ACTION="restore DB",
                    COMMAND='mongorestore -h "$s" --drop "/srv/db-dump/$s"')
    return {
        "migration/dump-db": (dump, True),
        "migration/restore-db": (restore, True),
        "migration/migration-helper.yml": (
            _yaml({"version": "2.1", "services": {"mongo-helper": helper}}), False),
    }


# --- production/config templates -------------------------------------------------------------

_PROD_HEADER = """\
# this is a template file for production setup, consult
# https://docs.docker.com/compose/compose-file/ for details on syntax and usage
#
# Notes:
# - integration/docker-compose.yml file is assumed to be included
# - integration/docker-compose.storage.minio.yml is assumed to be included
# - all services are part of `mender` network (service names are unchanged)
# - keys and certificates are generated using keygen utility from integration
#   repository, keys and certificates are stored in ./keys-generated directory
# - certificates and key are mounted into containers using volumes
# - minio artifacts are stored in a named volume `mender-artifacts`; volume
#   needs to be created manually using `docker volume create mender-artifacts`

version: '2.1'
services:
"""
_LOGGING = """\
        logging:
            options:
                max-file: "10"
                max-size: "50m"
"""
_PROD_VOLUMES = """
volumes:
    # mender artifacts storage
    mender-artifacts:
      external:
          # use external volume created manually
          name: mender-artifacts
    # mongo service database
    mender-db:
      external:
          # use external volume created manually
          name: mender-db
"""
_ALIAS_COMMENT_BUGGY = """\
                    # mender-api-gateway also serves the artifact storage: set
                    # this alias to the DNS name that storage will be available
                    # on, for instance if devices will access storage using
                    # https://s3.acme.org:9000, then set this to
                    # https://s3.acme.org:9000
"""
_ALIAS_COMMENT = """\
                    # mender-api-gateway also serves the artifact storage: set
                    # this alias to the DNS name that storage will be available
                    # on, for instance if devices will access storage using
                    # https://s3.acme.org, then set this to s3.acme.org
"""


def _keys_path(version: str, what: str) -> str:
    """Repo-root relative path of a keygen output: `gateway`/`storage` cert base, or a service key."""
    base = "./production/keys-generated"
    if what in ("deviceauth", "useradm"):
        return f"{base}/keys/{what}/private.key"
    if _vkey(version) >= (3, 1):
        return f"{base}/cert"
    return f"{base}/certs/{'api-gateway' if what == 'gateway' else 'storage-proxy'}"


def _backend_overrides(version: str) -> str:
    out = []
    for name in ("mender-workflows-server", "mender-useradm", "mender-device-auth", "mender-inventory"):
        out.append(f"\n    {name}:\n        command: server --automigrate\n")
        key = {"mender-useradm": "useradm", "mender-device-auth": "deviceauth"}.get(name)
        if key:
            out.append(f"        volumes:\n            - {_keys_path(version, key)}:/etc/{key}/rsa/private.pem:ro\n")
        out.append(_LOGGING)
    return "".join(out)


def _gateway_override(version: str) -> str:
    v = _vkey(version)
    gw, st = _keys_path(version, "gateway"), _keys_path(version, "storage")
    out = ["\n    mender-api-gateway:\n"]
    if (2, 7) <= v < (3, 0):
        out.append("        command:\n" + "".join(f"            - {arg}\n" for arg in _TRAEFIK_27_COMMAND))
    out.append("        ports:\n            # list of ports API gateway is made available on\n"
               '            - "443:443"\n')
    if v < (2, 7):
        out.append("        networks:\n            - mender\n")
        mounts = [f"{gw}/cert.crt:/var/www/mendersoftware/cert/cert.crt:ro",
                  f"{gw}/private.key:/var/www/mendersoftware/cert/private.key:ro"]
    else:
        comment = _ALIAS_COMMENT_BUGGY if v < (3, 0, 1) else _ALIAS_COMMENT
        out.append("        networks:\n            mender:\n                aliases:\n"
                   f"{comment}                    - set-my-alias-here.com\n")
        certs = "/certs" if v < (3, 0) else "/etc/traefik/certs"
        mounts = ["./tls.toml:/config/tls.toml"] if v < (3, 0) else []
        mounts += [f"{gw}/cert.crt:{certs}/cert.crt:ro", f"{gw}/private.key:{certs}/private.key:ro"]
        if v < (3, 1):
            mounts += [f"{st}/cert.crt:{certs}/s3.docker.mender.io.crt:ro",
                       f"{st}/private.key:{certs}/s3.docker.mender.io.key:ro"]
    out.append("        volumes:\n" + "".join(f"            - {m}\n" for m in mounts))
    out.append(_LOGGING)
    if v >= (3, 2):
        out.append("        environment:\n"
                   "            # comma separated list of the host names the API gateway accepts\n"
                   "            # requests for: the gateway's DNS name and the storage alias\n"
                   "            ALLOWED_HOSTS: my-gateway-dns-name,set-my-alias-here.com\n")
    else:
        out.append("        environment:\n            ALLOWED_HOSTS: my-gateway-dns-name\n")
    return "".join(out)


_STORAGE_PROXY_OVERRIDE = """
    storage-proxy:
        ports:
            # outside port mapping for artifact storage (note that storage-proxy listens on port 9000)
            - "9000:9000"
        networks:
            mender:
                aliases:
                    # change the alias to DNS name that storage will be
                    # available on, for instance if devices will access storage
                    # using https://s3.acme.org:9000, then set this to
                    # s3.acme.org
                    - set-my-alias-here.com
        environment:

            # use nginx syntax for rate limiting, see
            # https://nginx.org/en/docs/http/ngx_http_core_module.html#limit_rate
            # Examples:
            #   1m - 1MB/s
            #   512k - 512kB/s
            DOWNLOAD_SPEED: 1m
            MAX_CONNECTIONS: 100
        volumes:
            - @ST@/cert.crt:/var/www/storage-proxy/cert/cert.crt:ro
            - @ST@/private.key:/var/www/storage-proxy/cert/private.key:ro
            - ./storage-proxy/nginx.conf:/usr/local/openresty/nginx/conf/nginx.conf
"""


def _deployments_override(version: str) -> str:
    v = _vkey(version)
    out = ["\n    mender-deployments:\n        command: server --automigrate\n"]
    if v < (3, 3):
        cert = "/etc/ssl/certs/storage-proxy.crt" if v < (2, 7) else "/etc/ssl/certs/s3.docker.mender.io.crt"
        out.append(f"        volumes:\n            - {_keys_path(version, 'storage')}/cert.crt:{cert}:ro\n")
        out.append(f"        environment:\n            STORAGE_BACKEND_CERT: {cert}\n")
    else:
        out.append("        environment:\n")
    out.append("            # access key, the same value as MINIO_ACCESS_KEY\n"
               "            DEPLOYMENTS_AWS_AUTH_KEY:\n"
               "            # secret, the same valie as MINIO_SECRET_KEY\n"
               "            DEPLOYMENTS_AWS_AUTH_SECRET:\n\n")
    if v < (2, 7):
        out.append("            # deployments service uses signed URLs, hence it needs to access\n"
                   "            # storage-proxy using exactly the same name as devices will; if\n"
                   "            # devices will access storage using https://s3.acme.org:9000, then\n"
                   "            # set this to https://s3.acme.org:9000\n"
                   "            DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com:9000\n")
    elif v < (3, 3):
        out.append("            # deployments service uses signed URLs, hence it needs to access\n"
                   "            # the storage using exactly the same name as devices will; if\n"
                   "            # devices will access storage using https://s3.acme.org, then\n"
                   "            # set this to https://s3.acme.org\n"
                   "            DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com\n")
    else:
        out.append("            # deployments talks to minio directly and signs URLs for the\n"
                   "            # external name devices use; if devices will access storage\n"
                   "            # using https://s3.acme.org, then set this to https://s3.acme.org\n"
                   "            DEPLOYMENTS_AWS_URI: http://minio:9000\n"
                   "            DEPLOYMENTS_AWS_EXTERNAL_URI: https://set-my-alias-here.com\n")
    out.append(_LOGGING)
    return "".join(out)


_DATA_OVERRIDES = """
    minio:
        environment:
            # access key
            MINIO_ACCESS_KEY:
            # secret
            MINIO_SECRET_KEY:
        volumes:
            # mounts a docker volume named `mender-artifacts` as /export directory
            - mender-artifacts:/export:rw

    mender-mongo:
        volumes:
            - mender-db:/data/db:rw
"""
_REPORTING_OVERRIDES = """
    mender-reporting:
        command: server --automigrate
@LOGGING@
    mender-opensearch:
        # OpenSearch needs `sysctl -w vm.max_map_count=262144` on the host and
        # at least 6% free disk space
        environment:
            OPENSEARCH_JAVA_OPTS: "-Xms1g -Xmx1g"
"""


def _prod_template(version: str) -> str:
    parts = [_PROD_HEADER, _backend_overrides(version), _gateway_override(version)]
    if Release(version).has_storage_proxy:
        parts.append(_fill(_STORAGE_PROXY_OVERRIDE, ST=_keys_path(version, "storage")))
    parts += [_deployments_override(version), _DATA_OVERRIDES]
    if Release(version).has_reporting:
        parts.append(_fill(_REPORTING_OVERRIDES, LOGGING=_LOGGING.rstrip("\n")))
    parts.append(_PROD_VOLUMES)
    return "".join(parts)


_ENTERPRISE_TEMPLATE = """\
# This is a template file for running Mender Enterprise. It builds on the
# prod.yml template file, so everything described there applies to this template
# as well.
#
# Notes:
# - integration/docker-compose.enterprise.yml file is assumed to be included

version: '2.1'
services:

    mender-device-auth:
        environment:
            # Set this to a tenant token that should be used for clients that
            # don't supply a tenant token. If empty, clients without a tenant
            # token will be rejected.
            DEVICEAUTH_DEFAULT_TENANT_TOKEN: ''
"""


def _enterprise_template(version: str) -> str:
    text = _ENTERPRISE_TEMPLATE
    if _extra_compose_file(version) == "docker-compose.connect.yml":
        text += '\n    mender-deviceconnect:\n        environment:\n            DEVICECONNECT_ENABLE_AUDIT: "1"\n'
    if _vkey(version) >= (3, 3):
        key = _keys_path(version, "useradm")
        text += ("\n    mender-useradm:\n        volumes:\n"
                 f"            - {key}:/etc/useradm-enterprise/rsa/private.pem:ro\n")
    return text


# --- gateway configuration files -------------------------------------------------------------

_TLS_TOML = """\
[tls.stores]
  [tls.stores.default]
    [tls.stores.default.defaultCertificate]
      certFile = "/certs/cert.crt"
      keyFile = "/certs/private.key"

[[tls.certificates]]
  certFile = "/certs/s3.docker.mender.io.crt"
  keyFile = "/certs/s3.docker.mender.io.key"
"""
_STORAGE_PROXY_NGINX = """\
worker_processes 1;

events {
    worker_connections 1024;
}

http {
    server {
        listen 9000 ssl;
        ssl_certificate /var/www/storage-proxy/cert/cert.crt;
        ssl_certificate_key /var/www/storage-proxy/cert/private.key;
        client_max_body_size 0;

        location / {
            limit_rate_after 1m;
            set_by_lua $limit_rate 'return os.getenv("DOWNLOAD_SPEED")';
            proxy_pass http://minio:9000;
            proxy_set_header Host $http_host;
        }
    }
}
"""


def _traefik_files(version: str) -> Tree:
    v = _vkey(version)
    images = Release(version).images()
    routes = {name: _BACKEND[name][0] for name in _HEALTH_CHECKED}
    if "mender-reporting" in images:
        routes["mender-reporting"] = "reporting"
    middlewares = ["sec-headers", "compression"]
    routers: dict[str, object] = {
        route: {
            "entrypoints": "https", "middlewares": middlewares,
            "rule": f"PathPrefix(`/api/management/{{version:v[0-9]+}}/{route}`)",
            "service": route, "tls": True,
        } for route in routes.values()
    }
    routers["minio"] = {
        "entrypoints": "https", "middlewares": middlewares,
        "rule": "HeadersRegexp(`X-Amz-Date`, `.+`) || PathPrefix(`/mender-artifact-storage`)",
        "service": "minio", "tls": True,
    }
    services: dict[str, object] = {
        route: {"loadBalancer": {"servers": [{"url": f"http://{name}:8080"}]}} for name, route in routes.items()
    }
    services["minio"] = {"loadBalancer": {"servers": [{"url": "http://minio:9000"}]}}
    if v >= (3, 2):
        routers["hostname-checker"] = {
            "entrypoints": "https", "middlewares": ["sec-headers"], "priority": 999, "tls": True,
            "rule": '! Host(`{{join "`,`" (splitList "," (env "ALLOWED_HOSTS"))}}`)', "service": "noop@internal",
        }
    tls: dict[str, object] = {
        "stores": {"default": {"defaultCertificate": {
            "certFile": "/etc/traefik/certs/cert.crt", "keyFile": "/etc/traefik/certs/private.key"}}},
    }
    if v < (3, 1):
        tls["certificates"] = [{"certFile": "/etc/traefik/certs/s3.docker.mender.io.crt",
                                "keyFile": "/etc/traefik/certs/s3.docker.mender.io.key"}]
    header = "# Dynamic traefik configuration\n"
    middleware_doc = {"http": {"middlewares": {
        "sec-headers": {"headers": {"stsSeconds": 31536000, "browserXssFilter": True, "frameDeny": True}},
        "compression": {"compress": True},
    }}}
    return {
        "config/traefik/traefik.yaml": (_yaml({"http": {"routers": routers, "services": services}}, header, 2), False),
        "config/traefik/traefik.middlewares.yaml": (_yaml(middleware_doc, header, 2), False),
        "config/traefik/traefik.tls.yaml": (_yaml({"tls": tls}, header, 2), False),
    }


# --- noise files the bumps touch -------------------------------------------------------------


def _gitlab_ci(pin: str) -> str:
    doc = {
        "variables": {"MENDER_SERVER_VERSION": pin, "DOCKER_VERSION": "20.10"},
        "stages": ["test", "publish"],
        "test:backend-integration": {
            "stage": "test", "image": "docker:${DOCKER_VERSION}",
            "services": ["docker:${DOCKER_VERSION}-dind"],
            "script": ["./backend-tests/run"],
        },
    }
    return _yaml(doc, indent=2)


def _backend_tests(pin: str) -> str:
    runner = {
        "image": "mendersoftware/mender-test-containers:backend-integration-testing",
        "networks": ["mender"],
        "environment": {"INTEGRATION_VERSION": pin, "TESTS_IN_PARALLEL": "4"},
        "volumes": ["../tests:/tests"],
    }
    return _yaml({"version": "2.1", "services": {"mender-backend-tests-runner": runner}})


_README = """\
Mender: Integration
===================

This repository holds the docker-compose files of the Mender Server, the
production templates in `production/` and the integration tests.

See https://docs.mender.io/server-installation/production-installation for the
production installation and upgrade procedure.
"""
_LICENSE = """\
Copyright 2023 Northern.tech AS

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
"""
_GITIGNORE = "*.pyc\n__pycache__/\n.pytest_cache/\n"


def release_tree(version: str, pin: str | None = None) -> Tree:
    """Every file of the fixture repository for the layout of `version`, version lines `pin`."""
    pin = pin or version
    tree: Tree = {
        "README.md": (_README, False),
        "LICENSE": (_LICENSE, False),
        ".gitignore": (_GITIGNORE, False),
        ".gitlab-ci.yml": (_gitlab_ci(pin), False),
        "backend-tests/docker/docker-compose.backend-tests.yml": (_backend_tests(pin), False),
        "other-components.yml": (_other_components(pin), False),
        "docker-compose.yml": (_compose_base(version, pin), False),
        "docker-compose.storage.minio.yml": (_compose_storage(version, pin), False),
        "docker-compose.enterprise.yml": (_compose_enterprise(pin), False),
        "verify-docker-versions": (_verify_script(version), True),
        "production/run": (_run_script(version), True),
        "production/config/prod.yml.template": (_prod_template(version), False),
        "production/config/enterprise.yml.template": (_enterprise_template(version), False),
        **_compose_clients(pin),
    }
    extra = _extra_compose_file(version)
    if extra:
        tree[extra] = (_compose_extra(version, pin), False)
    v = _vkey(version)
    if v < (2, 7):
        tree["storage-proxy/nginx.conf"] = (_STORAGE_PROXY_NGINX, False)
    else:
        tree.update(_migration_files(version))
    if (2, 7) <= v < (3, 0):
        tree["tls.toml"] = (_TLS_TOML, False)
    elif v >= (3, 0):
        tree.update(_traefik_files(version))
    return tree


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
