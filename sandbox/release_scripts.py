"""A fixture release's scripts as upstream ships them: `production/run`, `verify-docker-versions`,
the database dump script and the migration files."""

from __future__ import annotations

from mender_upgrade.sandbox.release_compose import _extra_compose_file
from mender_upgrade.sandbox.release_layout import _BACKEND, Tree, _fill, _vkey, _yaml
from mender_upgrade.sandbox.releases import Release

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
