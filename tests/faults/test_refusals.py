"""Faults and bad input that must be refused before anything changes (fast cases)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from mender_upgrade.flows.cli import app
from mender_upgrade.flows.lock import host_lock
from mender_upgrade.tasks.backup import Manifest, ensure_verified_backup, list_backups
from tests.faults.conftest import (
    SEEN_TEXT,
    assert_invariants,
    committed_change,
    take_before,
    why_of,
)
from tests.flowrun import flow_settings, report_of, run_flow
from tests.sandbox.conftest import started_at
from tests.unit.test_settings import WRONG

pytestmark = pytest.mark.sandbox


def _refused_flow(sandbox, fault, baseline, settings, says: list[str], dirt: tuple[str, ...] = (), before=None):
    before = before or take_before(sandbox, dirt)
    state, run_id, asked = run_flow(settings, answer=lambda d: (True, "approved by the test"))
    assert not state.is_completed(), "the run should not have completed"
    report = report_of(run_id)
    fault.did = why_of(report) if "- why: " in report else state.message
    assert_invariants(sandbox, before, baseline, report, says, run=settings)
    return state, report, asked


@pytest.mark.fault(case="S3 down at start", injected="backup endpoint with nothing listening")
def test_s3_down_at_start(prefect_api, sandbox, fault, baseline):
    settings = flow_settings(sandbox, "2.7.2", backup={"endpoint_url": "http://127.0.0.1:1"})
    _, _, asked = _refused_flow(sandbox, fault, baseline, settings, ["**failed**", "pre-flight failed", "unreachable"])
    assert asked == []  # refused before anyone is asked to approve


@pytest.mark.fault(case="wrong S3 credentials", injected="a wrong secret key")
def test_wrong_s3_credentials(prefect_api, sandbox, fault, baseline):
    wrong = f"wrong-{uuid.uuid4().hex}"
    settings = flow_settings(sandbox, "2.7.2", backup={"secret_access_key": wrong})
    _, report, _ = _refused_flow(sandbox, fault, baseline, settings, ["refused", "SignatureDoesNotMatch", sandbox.s3.bucket])
    assert wrong not in report and sandbox.s3.secret_key not in report


@pytest.mark.fault(case="mutable bucket with `immutable`", injected="backup.immutable on a bucket without Object Lock")
def test_immutable_refuses_a_plain_bucket(prefect_api, sandbox, fault, baseline):
    settings = flow_settings(sandbox, "2.7.2", backup={"immutable": True})
    _refused_flow(sandbox, fault, baseline, settings, ["not immutable", "Object Lock: not enabled"])


@pytest.mark.fault(case="dirty working tree", injected="an uncommitted edit of prod.yml and an untracked file")
def test_dirty_working_tree(prefect_api, sandbox, fault, baseline):
    prod = sandbox.integration / "production/config/prod.yml"
    stray = sandbox.integration / "production/notes.txt"
    original = prod.read_bytes()
    prod.write_bytes(original + b"\n# half-done edit\n")
    stray.write_text("todo\n")
    try:
        _refused_flow(sandbox, fault, baseline, flow_settings(sandbox, "2.7.2"), ["uncommitted", "prod.yml"],
                      dirt=("production/config/prod.yml", "production/notes.txt"))
    finally:
        prod.write_bytes(original)
        stray.unlink()


@pytest.mark.fault(case="merge conflict", injected="a committed local edit of the line 2.7.2 changes: the deployments "
                                                  "image pinned to a hotfix build")
def test_merge_conflict_is_found_by_the_dry_run(prefect_api, sandbox, fault, baseline):
    def pin_hotfix(text: str) -> str:
        assert "mendersoftware/deployments:mender-2.6.4\n" in text
        return text.replace("mendersoftware/deployments:mender-2.6.4\n", "mendersoftware/deployments:mender-2.6.4-hotfix1\n")
    with committed_change(sandbox, "docker-compose.yml", pin_hotfix):
        _, _, asked = _refused_flow(sandbox, fault, baseline, flow_settings(sandbox, "2.7.2"),
                                    ["**refused**", "dry run", "docker-compose.yml", "nothing was changed"])
    assert asked == []


@pytest.mark.fault(case="unknown target", injected="target_version 9.9.9")
def test_unknown_target(prefect_api, sandbox, fault, baseline):
    _refused_flow(sandbox, fault, baseline, flow_settings(sandbox, "9.9.9"), ["**refused**", "9.9.9"])


@pytest.mark.fault(case="production before staging",
                   injected="staging.require_completed_on names a host with no completed run to the target")
def test_production_run_before_staging_is_refused(prefect_api, sandbox, fault, baseline):
    settings = flow_settings(sandbox, "2.7.2", staging={"require_completed_on": "staging-never-upgraded"})
    _, _, asked = _refused_flow(sandbox, fault, baseline, settings,
                                ["**refused**", "no upgrade of staging host staging-never-upgraded to 2.7.2"])
    assert asked == []


@pytest.mark.fault(case="malformed prod.yml", injected="committed prod.yml that is not YAML")
def test_malformed_prod_yml(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    lines = len((sandbox.integration / "production/config/prod.yml").read_text().splitlines())
    with committed_change(sandbox, "production/config/prod.yml", lambda t: t + "\n  services: [unclosed\n"):
        state, run_id, asked = run_flow(flow_settings(sandbox, "2.7.2"), answer=lambda d: (True, ""))
        assert state.is_failed() and asked == []
    # The clone's own ./run needs a valid prod.yml too: the invariants once the operator's file is back.
    report = report_of(run_id)
    fault.did = why_of(report)
    says = ["**refused**", "prod.yml is not valid YAML", f"(line {lines + 2}, column 3)"]  # the line it added
    assert_invariants(sandbox, before, baseline, report, says)


@pytest.mark.fault(case="missing prod.yml", injected="prod.yml deleted and the deletion committed")
def test_missing_prod_yml(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    with committed_change(sandbox, "production/config/prod.yml", lambda t: None):
        state, run_id, _ = run_flow(flow_settings(sandbox, "2.7.2"))
        assert state.is_failed()
    report = report_of(run_id)
    fault.did = why_of(report)
    assert_invariants(sandbox, before, baseline, report,
                      ["**failed**", "production/config/prod.yml does not exist", "prod.yml.template"])


@pytest.mark.fault(case="window closed", injected="a run started after its maintenance window ended")
def test_window_closed(prefect_api, sandbox, fault, baseline):
    opened = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    window = {"start": opened, "duration_minutes": 60}
    state, _, _ = _refused_flow(sandbox, fault, baseline, flow_settings(sandbox, "2.7.2", window=window),
                                ["**window closed**"])
    assert state.is_cancelled()


@pytest.mark.fault(case="second concurrent run", injected="a run for a host whose lock another run holds")
def test_second_run_for_the_same_host_is_held(prefect_api, sandbox, fault, baseline):
    settings = flow_settings(sandbox, "2.7.2", host_id="host-a", lock_wait_s=1)
    opened = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    with host_lock("host-a", 1):
        _refused_flow(sandbox, fault, baseline, settings, ["another upgrade of host-a is running"])
        # Meanwhile another host's run gets past its lock (and ends at its closed window).
        other, run_b, _ = run_flow(flow_settings(sandbox, "2.7.2", host_id="host-b", lock_wait_s=1,
                                                 window={"start": opened, "duration_minutes": 60}))
        assert other.is_cancelled() and "window closed" in report_of(run_b)


@pytest.mark.fault(case="approval rejected", injected="the approver says no, with a comment")
def test_rejection(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    settings = flow_settings(sandbox, "2.7.2")
    state, run_id, _ = run_flow(settings, answer=lambda d: (False, "not this week"))
    assert state.is_cancelled()
    report = report_of(run_id)
    fault.did = why_of(report)
    assert settings.backup.open_store().list_keys("") == []  # not even a backup
    assert_invariants(sandbox, before, baseline, report, ["**rejected**", "not this week", "alice"])


@pytest.mark.fault(case="approval timeout", injected="nobody answers the approval")
def test_unanswered_approval_times_out_as_a_no(prefect_api, sandbox, fault, baseline):
    before = take_before(sandbox)
    state, run_id, _ = run_flow(flow_settings(sandbox, "2.7.2", approval={"timeout_minutes": 0.05}))
    # Prefect itself ends a pause that timed out as Failed("... never resumed").
    assert not state.is_completed() and "never resumed" in state.message
    report = report_of(run_id)
    fault.did = why_of(report)
    assert_invariants(sandbox, before, baseline, report, ["**timed out**"])


@pytest.mark.fault(case="hostile target strings", injected="`3.0.0; rm -rf /`, `../x`, `--upload-pack=x` as --to")
def test_hostile_targets_are_refused_before_git(sandbox, tmp_path, fault, baseline):
    before = take_before(sandbox)
    config = tmp_path / "upgrade.toml"
    config.write_text(f'integration_dir = "{sandbox.integration}"\n')
    outputs = []
    for hostile in ("3.0.0; rm -rf /", "../x", "--upload-pack=x"):
        result = CliRunner().invoke(app, ["run", "--config", str(config), "--to", hostile])
        outputs.append(" ".join(result.output.split()))
        assert result.exit_code == 2 and "target_version: must match" in outputs[-1], result.output
    SEEN_TEXT.extend(outputs)
    fault.did = outputs[0].replace("error: ", "refused: ")[:160]
    assert_invariants(sandbox, before, baseline, "\n".join(outputs), [r"^\d+\.\d+\.\d+$"])


@pytest.mark.fault(case="config file with each field wrong", injected=f"{len(WRONG)} bad values, one at a time")
def test_each_wrong_config_field_is_named(sandbox, tmp_path, fault, baseline):
    import yaml
    before = take_before(sandbox)
    outputs = []
    for data, field in WRONG:
        config = tmp_path / "upgrade.yaml"
        config.write_text(yaml.safe_dump({"integration_dir": str(sandbox.integration)} | data))
        result = CliRunner().invoke(app, ["run", "--config", str(config)])
        outputs.append(" ".join(result.output.split()))
        assert result.exit_code == 2 and field in outputs[-1], (field, result.output)
    SEEN_TEXT.extend(outputs)
    fault.did = f"every run refused with the field named, e.g. {outputs[4].split('invalid configuration: ')[-1][:90]}"
    assert_invariants(sandbox, before, baseline, "\n".join(outputs), ["is not a known setting"])


def _tar(*entries: tuple[str, bytes, bytes, int, str]) -> bytes:
    """A tar of (name, type, data, mode, linkname) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data, mode, link in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.fixture
def real_backup(sandbox):
    """A real verified backup of this machine's host (the CLI's default host id), made once per sandbox."""
    settings = flow_settings(sandbox, "2.7.2").backup.model_copy(update={"target": f"s3://{sandbox.s3.bucket}/forged"})
    store = settings.open_store(socket.gethostname())
    made = [m for m in list_backups(store) if m.verified]  # forged copies are unsigned: never listed
    return store, made[-1] if made else ensure_verified_backup(sandbox.client, sandbox.integration, store, mode="hot",
                                                               log=lambda m: None)


def _forged_copy(store, manifest: Manifest, tag: str, volume_tar: bytes | None = None, name: str | None = None,
                 tamper_hash: bool = False) -> str:
    """A copy of `manifest`'s backup under a new id, as someone who can write to the bucket would
    make it: the volume archive replaced by `volume_tar` and named `name`, the manifest unsigned,
    or (`tamper_hash`) signed and then given another hash."""
    backup_id = f"{manifest.backup_id}-{tag}"
    doc = json.loads(manifest.to_json(store.signing_key))
    doc["backup_id"] = backup_id
    for obj in doc["objects"]:
        body = store.get_bytes(obj["key"])
        if obj["kind"] == "volume":
            body = volume_tar if volume_tar is not None else body
            obj["name"] = name or obj["name"]
            obj["key"] = f"{backup_id}/volumes/{obj['name']}.tar"
        else:
            obj["key"] = f"{backup_id}/{obj['key'].split('/', 1)[1]}"
        obj["size"], obj["sha256"], obj["version_id"] = len(body), hashlib.sha256(body).hexdigest(), None
        if "/" not in obj["name"] and ";" not in obj["name"]:
            store.put_bytes(obj["key"], body)
    if tamper_hash:
        forged = Manifest.from_json(json.dumps(doc).encode(), b"", allow_unsigned=True)
        signed = json.loads(forged.to_json(store.signing_key))
        signed["objects"][0]["sha256"] = hashlib.sha256(b"forged").hexdigest()
        body = json.dumps(signed).encode()
    else:
        doc.pop("signature", None)
        body = json.dumps(doc).encode()
    store.put_bytes(f"{backup_id}/manifest.json", body)
    return f"{store.uri}/{backup_id}/manifest.json"


VOLUME = "mender-artifacts"
FORGED = {
    "unsigned": (dict(), [], "is not signed"),
    "tampered hash": (dict(tamper_hash=True), [], "does not match the signing key"),
    "host path as volume name": (dict(name="/etc"), ["--allow-unsigned"], "not a Docker volume name"),
    "shell syntax as volume name": (dict(name="x;touch /tmp/pwned-by-manifest"), ["--allow-unsigned"],
                                    "not a Docker volume name"),
    "another installation's volume": (dict(name="docker-registry-data"), ["--allow-unsigned"],
                                      "not a data volume of this installation"),
    "absolute and `..` entries": (dict(volume_tar=_tar(("/etc/cron.d/evil", tarfile.REGTYPE, b"evil", 0o644, ""),
                                                       ("../../outside", tarfile.REGTYPE, b"evil", 0o644, ""))),
                                  ["--allow-unsigned"], "absolute path"),
    "FIFO entry": (dict(volume_tar=_tar((f"{VOLUME}/fifo", tarfile.FIFOTYPE, b"", 0o644, ""))),
                   ["--allow-unsigned"], "special file"),
    "device entry": (dict(volume_tar=_tar((f"{VOLUME}/sda", tarfile.BLKTYPE, b"", 0o660, ""))),
                     ["--allow-unsigned"], "special file"),
    "hard link outside": (dict(volume_tar=_tar((f"{VOLUME}/shadow", tarfile.LNKTYPE, b"", 0o644, "etc/shadow"))),
                          ["--allow-unsigned"], "leaves the volume"),
    "symlink outside": (dict(volume_tar=_tar((f"{VOLUME}/up", tarfile.SYMTYPE, b"", 0o777, "../../../etc"))),
                        ["--allow-unsigned"], "leaves the volume"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_manifest_is_refused_before_anything_stops(sandbox, fault, baseline, real_backup, case, request):
    kwargs, flags, says = FORGED[case]
    request.node.add_marker(pytest.mark.fault(case=f"forged manifest: {case}",
                                              injected=f"`restore` of a backup copy with {case}"))
    store, manifest = real_backup
    before, started = take_before(sandbox), started_at(sandbox)
    uri = _forged_copy(store, manifest, case.split()[0].strip("`").lower() or "x", **kwargs)
    env = {"AWS_ACCESS_KEY_ID": sandbox.s3.access_key, "AWS_SECRET_ACCESS_KEY": sandbox.s3.secret_key}
    result = CliRunner().invoke(app, ["restore", "--manifest", uri, "--integration", str(sandbox.integration),
                                      "--endpoint-url", sandbox.s3.url, "--yes", *flags], env=env)
    output = " ".join(result.output.split())
    SEEN_TEXT.append(output)
    assert result.exit_code == 1, output
    fault.did = "refused before stopping anything: " + output.split("error: ", 1)[-1][:200]
    assert started_at(sandbox) == started, "a service was stopped or restarted"
    assert not os.path.exists("/tmp/pwned-by-manifest")
    assert_invariants(sandbox, before, baseline, output, [says])
