"""prod.yml as text in, text out: the 2.7 storage-alias patch and the template carry-over.

Golden files under golden/: `*.yml` is an operator's file, `*.alias.yml` / `*.to-<v>.yml` what
the patch makes of it. Regenerate them with UPDATE_GOLDEN=1 after an intended change, and read
the diff. Templates and operator files come from the fixture generator (no git needed).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
import yaml

import mender_upgrade.sandbox.integration_fixture as fx
from mender_upgrade.tasks.storage_alias import StorageAliasNotFound, find_storage_alias, patch_storage_alias
from mender_upgrade.tasks.template_carry import carry_template_changes, placeholder_values, template_drift
from mender_upgrade.tasks.yaml_edit import MISSING, ProdYamlError, delete_key, insert_key, replace_value

GOLDEN = Path(__file__).parent / "golden"
ALIAS = fx.OPERATOR_STORAGE_HOST


def template(version: str, name: str = "prod.yml.template") -> str:
    return fx.release_tree(version)[f"production/config/{name}"][0]


def operator_file(version: str) -> str:
    return fx.operator_prod_yml(template(version))


def golden(name: str, produced: str) -> str:
    """The golden file's text; with UPDATE_GOLDEN=1, `produced` is written there first."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(produced)
    return path.read_text()


def changed_old_lines(before: str, after: str) -> list[int]:
    """Indexes of the lines of `before` that a minimal diff replaces or deletes."""
    matcher = difflib.SequenceMatcher(a=before.split("\n"), b=after.split("\n"), autojunk=False)
    return [i for tag, i1, i2, _, _ in matcher.get_opcodes() if tag != "equal" for i in range(i1, i2)]


def service_of_line(text: str) -> list[str]:
    """For each line of `text`: the service whose block holds it ('' outside `services:`)."""
    owners, current, inside, column = [], "", False, None
    for line in text.split("\n"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped and not stripped.startswith("#") and indent == 0:
            inside, current, column = line.startswith("services:"), "", None
        elif inside and stripped and not stripped.startswith("#"):
            column = indent if column is None else column
            if indent == column:
                current = stripped.rstrip(":")
        owners.append(current if inside else "")
    return owners


# --- golden files --------------------------------------------------------------------------------


def test_fixture_operator_file_is_the_golden_input() -> None:
    assert operator_file("2.6.4") == (GOLDEN / "prod-2.6.4.yml").read_text()


@pytest.mark.parametrize("name", ["prod-2.6.4", "prod-2.6-custom"])
def test_alias_patch_matches_golden_and_touches_only_patched_services(name: str) -> None:
    before = (GOLDEN / f"{name}.yml").read_text()
    after = patch_storage_alias(before, template("2.7.2"))
    assert after == golden(f"{name}.alias.yml", after)
    owners = service_of_line(before)
    touched = {owners[i] for i in changed_old_lines(before, after)}
    assert touched <= {"mender-api-gateway", "storage-proxy", "mender-deployments", ""}
    uri_line = next(i for i, line in enumerate(before.split("\n")) if "DEPLOYMENTS_AWS_URI" in line)
    deployments = [i for i in changed_old_lines(before, after) if owners[i] == "mender-deployments"]
    assert deployments == [uri_line]  # in deployments, only the URI line changes
    assert all(owners[i] != "" or not before.split("\n")[i].strip() for i in changed_old_lines(before, after))


def test_alias_patch_result_is_the_27_shape() -> None:
    after = yaml.safe_load(patch_storage_alias(operator_file("2.6.4"), template("2.7.2")))
    services = after["services"]
    assert "storage-proxy" not in services
    gateway = services["mender-api-gateway"]
    assert gateway["networks"] == {"mender": {"aliases": [ALIAS]}}
    assert "--providers.file.filename=/config/tls.toml" in gateway["command"]
    assert gateway["volumes"] == yaml.safe_load(template("2.7.2"))["services"]["mender-api-gateway"]["volumes"]
    assert gateway["ports"] == ["127.0.0.1:443:443"]
    assert services["mender-deployments"]["environment"]["DEPLOYMENTS_AWS_URI"] == f"https://{ALIAS}"


def test_custom_file_keeps_its_own_certificates_and_mounts() -> None:
    after = yaml.safe_load(patch_storage_alias((GOLDEN / "prod-2.6-custom.yml").read_text(), template("2.7.2")))
    gateway = after["services"]["mender-api-gateway"]
    assert gateway["networks"] == {"mender": {"aliases": [ALIAS]}, "monitoring": None}
    assert gateway["volumes"] == [
        "./tls.toml:/config/tls.toml",
        "/etc/mender/tls/gateway.crt:/certs/cert.crt:ro",
        "/etc/mender/tls/gateway.key:/certs/private.key:ro",
        "/etc/mender/tls/storage.crt:/certs/s3.docker.mender.io.crt:ro",
        "/etc/mender/tls/storage.key:/certs/s3.docker.mender.io.key:ro",
        "./production/gateway-extra.conf:/etc/nginx/extra.conf:ro",
    ]
    assert after["services"]["mender-deployments"]["environment"][1] == f"DEPLOYMENTS_AWS_URI=https://{ALIAS}"


def test_full_hop_264_to_272_matches_golden() -> None:
    before = operator_file("2.6.4")
    patched = patch_storage_alias(before, template("2.7.2"))
    result = carry_template_changes(patched, template("2.6.4"), template("2.7.2"), removed_services=("storage-proxy",))
    assert result.text == golden("prod-2.6.4.to-2.7.2.yml", result.text)
    assert {c.key for c in result.carried} == {"services.mender-deployments.volumes",
                                               "services.mender-deployments.environment.STORAGE_BACKEND_CERT"}
    assert result.drift == []


# --- idempotence and the alias ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prod-2.6.4", "prod-2.6-custom"])
def test_alias_patch_is_idempotent(name: str) -> None:
    once = patch_storage_alias((GOLDEN / f"{name}.yml").read_text(), template("2.7.2"))
    assert patch_storage_alias(once, template("2.7.2")) == once


def test_carry_over_is_idempotent() -> None:
    text = operator_file("3.1.1")
    once = carry_template_changes(text, template("3.1.1"), template("3.2.2")).text
    again = carry_template_changes(once, template("3.1.1"), template("3.2.2"))
    assert again.text == once and again.changes == []


def test_storage_alias_sources() -> None:
    assert find_storage_alias(operator_file("2.6.4")) == ALIAS  # storage-proxy alias
    assert find_storage_alias(operator_file("3.3.2")) == ALIAS  # gateway alias (3.x layout)
    uri_only = "services:\n  mender-deployments:\n    environment:\n      DEPLOYMENTS_AWS_URI: https://files.acme.org:9000\n"
    assert find_storage_alias(uri_only) == "files.acme.org"
    assert find_storage_alias("services:\n  minio: {}\n") is None
    assert find_storage_alias(template("2.6.4")) is None  # placeholders are not names


def test_missing_or_malformed_alias_is_refused() -> None:
    no_alias = "services:\n  mender-api-gateway:\n    networks:\n    - mender\n"
    with pytest.raises(StorageAliasNotFound, match="cannot tell the storage DNS name"):
        patch_storage_alias(no_alias, template("2.7.2"))
    for hostile in ("https://s3.example.com:9000", "s3.example.com; rm -rf /", "-x"):
        with pytest.raises(StorageAliasNotFound, match="not a bare DNS name"):
            patch_storage_alias(operator_file("2.6.4"), template("2.7.2"), alias=hostile)


def test_alias_written_as_url_is_fixed_and_placeholder_replaced() -> None:
    """The 2.7 template comment said to write https://s3.acme.org:9000 (fixed in 3.0.1)."""
    text = operator_file("2.7.2").replace(f"- {ALIAS}", f"- https://{ALIAS}:9000")
    after = yaml.safe_load(patch_storage_alias(text, template("2.7.2"), alias=ALIAS))
    assert after["services"]["mender-api-gateway"]["networks"]["mender"]["aliases"] == [ALIAS]
    placeholder = operator_file("2.7.2").replace(f"- {ALIAS}", "- set-my-alias-here.com")
    after = yaml.safe_load(patch_storage_alias(placeholder, template("2.7.2"), alias=ALIAS))
    assert after["services"]["mender-api-gateway"]["networks"]["mender"]["aliases"] == [ALIAS]


# --- carry-over by era ---------------------------------------------------------------------------


def test_30_drops_the_27_traefik_command() -> None:
    """A kept 2.7 `command:` overrides 3.0's file provider: no routers, 404 everywhere."""
    result = carry_template_changes(operator_file("2.7.2"), template("2.7.2"), template("3.0.2"))
    gateway = yaml.safe_load(result.text)["services"]["mender-api-gateway"]
    assert "command" not in gateway
    assert all("/etc/traefik/certs/" in m for m in gateway["volumes"])


def test_32_allowed_hosts_gets_the_storage_name() -> None:
    result = carry_template_changes(operator_file("3.1.1"), template("3.1.1"), template("3.2.2"))
    env = yaml.safe_load(result.text)["services"]["mender-api-gateway"]["environment"]
    assert env["ALLOWED_HOSTS"] == f"{fx.OPERATOR_GATEWAY_HOST},{ALIAS}"
    assert "# comma separated list of the host names the API gateway accepts" in result.text


def test_33_external_uri_added_with_the_operator_names() -> None:
    result = carry_template_changes(operator_file("3.2.2"), template("3.2.2"), template("3.3.2"))
    env = yaml.safe_load(result.text)["services"]["mender-deployments"]["environment"]
    assert env["DEPLOYMENTS_AWS_URI"] == "http://minio:9000"
    assert env["DEPLOYMENTS_AWS_EXTERNAL_URI"] == f"https://{ALIAS}"
    assert "DEPLOYMENTS_STORAGE_MAX_IMAGE_SIZE" in env  # the operator's own key stays
    assert "# deployments talks to minio directly" in result.text  # comment follows the value


def test_customized_keys_are_reported_not_overwritten() -> None:
    text = operator_file("3.1.1").replace(f"ALLOWED_HOSTS: {fx.OPERATOR_GATEWAY_HOST}",
                                          "ALLOWED_HOSTS: mender.example.com,other.example.com")
    result = carry_template_changes(text, template("3.1.1"), template("3.2.2"))
    assert result.text == text
    [change] = result.drift
    assert (change.key, change.status) == ("services.mender-api-gateway.environment.ALLOWED_HOSTS", "customized")


def test_unfilled_placeholder_is_reported() -> None:
    text = operator_file("3.1.1").replace(f"- {ALIAS}", "- set-my-alias-here.com")
    text = text.replace("DEPLOYMENTS_AWS_URI: https://s3.example.com", "DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com")
    result = carry_template_changes(text, template("3.1.1"), template("3.2.2"))
    assert [(c.status, "set-my-alias-here.com" in c.note) for c in result.drift] == [("needs-value", True)]
    assert result.text == text


def test_mount_of_a_missing_file_is_reported() -> None:
    """3.1's keygen writes keys-generated/cert/; a 3.0 clone has certs/api-gateway/ only."""
    present = {f"production/keys-generated/{p}" for p in fx.keygen_files("3.0.2")}
    result = carry_template_changes(operator_file("3.0.2"), template("3.0.2"), template("3.1.1"),
                                    path_exists=lambda p: p.removeprefix("./") in present)
    assert {c.status for c in result.drift} == {"missing-file"}
    assert result.text == operator_file("3.0.2")


def test_removed_services_lose_their_overrides() -> None:
    text = operator_file("3.5.1")
    result = carry_template_changes(text, template("3.5.1"), template("3.6.5"),
                                    removed_services=("mender-reporting", "mender-opensearch"))
    services = yaml.safe_load(result.text)["services"]
    assert "mender-reporting" not in services and "mender-opensearch" not in services
    assert result.text.endswith("name: mender-db\n") and "\n\n\nvolumes:" not in result.text
    assert {c.status for c in result.carried} == {"removed-service"}


def test_35_adds_the_reporting_overrides() -> None:
    result = carry_template_changes(operator_file("3.4.0"), template("3.4.0"), template("3.5.1"))
    services = yaml.safe_load(result.text)["services"]
    assert services["mender-opensearch"]["environment"]["OPENSEARCH_JAVA_OPTS"] == "-Xms1g -Xmx1g"
    assert "    mender-reporting:\n        command: server --automigrate" in result.text


def test_enterprise_template_changes_carry_too() -> None:
    text = template("2.6.4", "enterprise.yml.template")
    result = carry_template_changes(text, text, template("2.7.2", "enterprise.yml.template"),
                                    removed_services=("mender-deviceconnect",))
    assert "mender-deviceconnect" not in result.text and result.text.endswith("DEFAULT_TENANT_TOKEN: ''\n")


def test_drift_lists_every_changed_template_key() -> None:
    changes = template_drift(operator_file("2.6.4"), template("2.6.4"), template("2.7.2"),
                             removed_services=("storage-proxy",))
    assert [(c.key, c.status) for c in changes][:2] == [("services.storage-proxy", "removed-service"),
                                                        ("services.mender-api-gateway.command", "carried")]
    assert changes[1].current is MISSING
    assert changes[1].to_dict()["current"] is None


def test_placeholders_are_read_off_the_operator_file() -> None:
    assert placeholder_values(operator_file("3.2.2"), template("3.2.2")) == {
        "set-my-alias-here.com": ALIAS, "my-gateway-dns-name": fx.OPERATOR_GATEWAY_HOST}


# --- the edit primitives -------------------------------------------------------------------------


def test_scalar_edit_keeps_quotes_and_trailing_comment() -> None:
    text = "a:\n  b: \"old\"   # keep me\n  c: 1\n"
    assert replace_value(text, ("a", "b"), "new") == "a:\n  b: \"new\"   # keep me\n  c: 1\n"


def test_flow_style_value_is_rewritten_in_block_style_only_there() -> None:
    text = "x: 1  # top\na:\n  env: {K: v, L: w}\n  other: [1, 2]\n"
    out = insert_key(text, ("a", "env", "M"), "z")
    assert yaml.safe_load(out)["a"]["env"] == {"K": "v", "L": "w", "M": "z"}
    assert out.startswith("x: 1  # top\na:\n") and out.endswith("  other: [1, 2]\n")


def test_delete_takes_the_comments_above_and_empty_parents() -> None:
    text = "s:\n  a:\n    # about k\n    k: 1\n  b: 2\n"
    assert delete_key(text, ("s", "a", "k")) == "s:\n  b: 2\n"


def test_plain_scalars_that_yaml_11_would_misread_are_quoted() -> None:
    text = "a:\n  b: x\n"
    assert replace_value(text, ("a", "b"), "on") == "a:\n  b: 'on'\n"
    assert replace_value(text, ("a", "b"), "1:20") == "a:\n  b: '1:20'\n"


def test_invalid_yaml_is_an_error_naming_the_file() -> None:
    with pytest.raises(ProdYamlError, match="prod.yml is not valid YAML"):
        find_storage_alias("services:\n  a: [\n")


def test_long_syntax_mounts_are_left_alone() -> None:
    text = operator_file("2.6.4").replace(
        "            - ./production/keys-generated/certs/api-gateway/cert.crt:/var/www/mendersoftware/cert/cert.crt:ro\n",
        "            - type: bind\n              source: ./production/keys-generated/certs/api-gateway/cert.crt\n"
        "              target: /var/www/mendersoftware/cert/cert.crt\n")
    gateway = yaml.safe_load(patch_storage_alias(text, template("2.7.2")))["services"]["mender-api-gateway"]
    assert gateway["volumes"][0]["type"] == "bind" and len(gateway["volumes"]) == 2
    assert gateway["networks"] == {"mender": {"aliases": [ALIAS]}}
