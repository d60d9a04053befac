"""ALLOWED_HOSTS on the real 3.2.0, 3.6.5 and 3.7.11 templates: from 3.2 Traefik rejects any Host
not listed there, so the storage name devices use must be in it.

The templates under golden/upstream/ are upstream's text byte for byte; an operator's prod.yml
is the template with its placeholders filled in, as the production-installation docs say.
Golden files `prod-<version>.allowed-hosts.yml` are what the edit makes of it (UPDATE_GOLDEN=1
regenerates them; read the diff)."""

from __future__ import annotations

import difflib
from pathlib import Path

import git
import pytest
import yaml

import mender_upgrade.sandbox.integration_fixture as fx
from mender_upgrade.tasks import repository as r
from mender_upgrade.tasks.storage_alias import AllowedHostsNotEditable, allow_storage_host, find_storage_alias
from tests.unit.test_prod_yaml import golden

UPSTREAM = Path(__file__).parent / "golden" / "upstream"
GATEWAY_NAME, STORAGE_NAME = "mender.example.com", "s3.example.com"
VERSIONS = ["3.2.0", "3.6.5", "3.7.11"]


def real_template(version: str) -> str:
    return (UPSTREAM / f"prod.yml.template-{version}").read_text()


def operator_file(version: str, gateway: str = GATEWAY_NAME) -> str:
    return real_template(version).replace("my-gateway-dns-name", gateway).replace("set-my-alias-here.com", STORAGE_NAME)


def gateway_env(text: str) -> object:
    return yaml.safe_load(text)["services"]["mender-api-gateway"]["environment"]


def diff(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_storage_name_is_added_to_the_quoted_list_in_place(version: str) -> None:
    text = operator_file(version)
    assert '            ALLOWED_HOSTS: "mender.example.com"' in text.splitlines()  # the real form: quoted
    assert find_storage_alias(text) == STORAGE_NAME
    patched = allow_storage_host(text, STORAGE_NAME)
    assert patched == golden(f"prod-{version}.allowed-hosts.yml", patched)
    assert diff(text, patched) == ['-            ALLOWED_HOSTS: "mender.example.com"',
                                   '+            ALLOWED_HOSTS: "mender.example.com,s3.example.com"']
    assert gateway_env(patched) == {"ALLOWED_HOSTS": "mender.example.com,s3.example.com"}
    assert "# ALLOWED_HOSTS is a comma-separated list of allowed hostnames" in patched  # comments stay
    assert allow_storage_host(patched, STORAGE_NAME) == patched  # idempotent


@pytest.mark.parametrize("version", VERSIONS)
def test_nothing_changes_when_the_gateway_already_answers_the_storage_name(version: str) -> None:
    same = operator_file(version, gateway=STORAGE_NAME)
    assert allow_storage_host(same, STORAGE_NAME) == same
    listed = operator_file(version, gateway=f"{GATEWAY_NAME}, S3.example.com")  # spaces and case as Traefik takes them
    assert allow_storage_host(listed, STORAGE_NAME) == listed
    unset = "\n".join(line for line in operator_file(version).splitlines()
                      if "ALLOWED_HOSTS" not in line or line.strip().startswith("#")) + "\n"
    assert "ALLOWED_HOSTS:" not in unset  # no ALLOWED_HOSTS: Traefik checks no host name
    assert allow_storage_host(unset, STORAGE_NAME) == unset


def test_the_list_form_environment_is_edited_in_place() -> None:
    """compose also takes `environment:` as a `KEY=value` list (2.7.2's template uses it for
    create-artifact-worker); the item is rewritten, nothing else."""
    text = operator_file("3.7.11").replace(
        '        environment:\n            # ALLOWED_HOSTS is a comma-separated list of allowed hostnames\n'
        '            ALLOWED_HOSTS: "mender.example.com"\n',
        '        environment:\n            # ALLOWED_HOSTS is a comma-separated list of allowed hostnames\n'
        '            - ALLOWED_HOSTS=mender.example.com\n            - TZ=UTC\n')
    assert gateway_env(text) == ["ALLOWED_HOSTS=mender.example.com", "TZ=UTC"]
    patched = allow_storage_host(text, STORAGE_NAME)
    assert diff(text, patched) == ["-            - ALLOWED_HOSTS=mender.example.com",
                                   "+            - ALLOWED_HOSTS=mender.example.com,s3.example.com"]
    assert allow_storage_host(patched, STORAGE_NAME) == patched


@pytest.mark.parametrize("value,line", [
    ('"${MENDER_HOSTS}"', 'ALLOWED_HOSTS: "<gateway name>,s3.example.com"'),
])
def test_a_value_from_the_environment_is_refused_with_the_line_to_add(value: str, line: str) -> None:
    text = operator_file("3.6.5").replace('ALLOWED_HOSTS: "mender.example.com"', f"ALLOWED_HOSTS: {value}")
    with pytest.raises(AllowedHostsNotEditable) as caught:
        allow_storage_host(text, STORAGE_NAME)
    assert "s3.example.com" in caught.value.message and "compose interpolation" in caught.value.message
    assert f"`{line}`" in caught.value.hint and "mender-api-gateway" in caught.value.hint


def test_an_env_file_without_the_key_in_prod_yml_is_refused() -> None:
    text = operator_file("3.6.5").replace(
        '            ALLOWED_HOSTS: "mender.example.com"\n', "").replace(
        "        environment:\n            # ALLOWED_HOSTS is a comma-separated list of allowed hostnames\n",
        "        env_file: gateway.env\n")
    assert "env_file" in yaml.safe_load(text)["services"]["mender-api-gateway"]
    with pytest.raises(AllowedHostsNotEditable, match="env_file") as caught:
        allow_storage_host(text, STORAGE_NAME)
    assert '`ALLOWED_HOSTS: "<gateway name>,s3.example.com"`' in caught.value.hint


def test_a_hop_into_32_adds_the_storage_name_and_commits_it(tmp_path: Path) -> None:
    """On the fixture repository: an operator whose ALLOWED_HOSTS names only the gateway (edited
    by hand, so the template carry-over leaves it) gets the storage name on a hop into 3.2+."""
    upstream = fx.create_upstream(tmp_path / "upstream.git")
    repo = git.Repo(fx.create_operator_clone(upstream, tmp_path / "mender", "3.2.0"))
    prod = Path(repo.working_tree_dir) / r.PROD_YML
    prod.write_text(prod.read_text().replace(f"ALLOWED_HOSTS: {fx.OPERATOR_GATEWAY_HOST},{fx.OPERATOR_STORAGE_HOST}",
                                             f'ALLOWED_HOSTS: "{fx.OPERATOR_GATEWAY_HOST}"'))
    repo.git.commit("-q", "-am", "ops: gateway name only")
    result = r.upgrade_hop(repo, "3.2.0", "3.3.2", check=lambda root: None)
    assert gateway_env(prod.read_text())["ALLOWED_HOSTS"] == f"{fx.OPERATOR_GATEWAY_HOST},{fx.OPERATOR_STORAGE_HOST}"
    assert f'ALLOWED_HOSTS: "{fx.OPERATOR_GATEWAY_HOST},{fx.OPERATOR_STORAGE_HOST}"' in prod.read_text()
    assert repo.head.commit.hexsha == result.config.commits[-1]
    assert "ALLOWED_HOSTS" in repo.head.commit.message and repo.git.status("--porcelain") == ""
