"""A fixture release's whole file tree: its compose files, scripts, templates and gateway
configuration, and the noise files (CI, tests, README) the version bumps touch."""

from __future__ import annotations

from mender_upgrade.sandbox.release_compose import (_compose_base, _compose_clients, _compose_enterprise, _compose_extra,
                                     _compose_storage, _extra_compose_file, _other_components)
from mender_upgrade.sandbox.release_config import (_STORAGE_PROXY_NGINX, _TLS_TOML, _enterprise_template, _prod_template,
                                    _traefik_files)
from mender_upgrade.sandbox.release_layout import Tree, _vkey, _yaml
from mender_upgrade.sandbox.release_scripts import _migration_files, _run_script, _verify_script


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
