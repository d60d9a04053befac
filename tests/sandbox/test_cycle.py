"""The container cycle through the operator's ./run: health gate, downtime, orphans, MongoDB
major hops and automatic rollback, on the sandbox."""

from __future__ import annotations

import pytest

from sandbox import stack
from sandbox.releases import Release
from tasks.containers import cycle_containers, project_states, pull_images
from tasks.mongo import server_info
from tasks.mongo_upgrade import (
    MongoHopRefused,
    check_mongo_hop,
    cpu_has_avx,
    finish_mongo_hop,
)
from tasks.repository import fetch_tags, open_integration, update_repository
from tests.sandbox.conftest import mongo_snapshot

pytestmark = pytest.mark.sandbox


def _merge_and_pull(sandbox, target: str) -> str:
    repo = open_integration(sandbox.integration)
    fetch_tags(repo)
    [hop] = update_repository(repo, [target])
    pull_images(sandbox.integration)
    return hop.merge.pre_upgrade_tag


def _images(sandbox) -> dict[str, str]:
    return {s: st.image for s, st in project_states(sandbox.client).items()}


def test_good_upgrade_removes_the_storage_proxy_orphan_and_records_downtime(sandbox):
    stack.mark_dirty(sandbox)
    with sandbox.mongo() as m:
        before = mongo_snapshot(m)
    assert "storage-proxy" in _images(sandbox)
    _merge_and_pull(sandbox, "2.7.2")
    before_start = {s: sandbox.client.containers.get(st.container_id).attrs["State"]["StartedAt"]
                    for s, st in project_states(sandbox.client).items()}
    report = cycle_containers(sandbox.client, sandbox.integration, health_timeout=120, stability_window=3)
    assert _images(sandbox) == Release("2.7.2").images()  # storage-proxy gone, traefik gateway
    assert all(state.startswith("running/") for state in report.services.values()), report.services
    assert 0 < report.downtime_s < 120
    assert set(report.step_seconds) == {"stop", "rm", "up", "orphans", "health"}
    # mongo and minio run the same image and configuration in both releases: never stopped;
    # every Mender service and the new gateway were created again.
    after = {s: (st.container_id, sandbox.client.containers.get(st.container_id).attrs["State"]["StartedAt"])
             for s, st in project_states(sandbox.client).items()}
    assert sorted(report.kept) == ["mender-mongo", "minio"]
    for kept in report.kept:
        assert after[kept][1] == before_start[kept]
    for service in set(after) - set(report.kept):
        assert after[service][1] != before_start.get(service)
    with sandbox.mongo() as m:
        assert mongo_snapshot(m) == before


def test_mongo_44_to_50_hop_sets_fcv_after_the_new_stack_is_healthy(sandbox):
    sb = stack.up("3.6.5", log=lambda m: None)
    with sb.mongo() as m:
        before = mongo_snapshot(m)
        info = server_info(m)
    assert info.version.startswith("4.4") and info.feature_compatibility_version == "4.4"
    check_mongo_hop("4.4", "5.0", info.feature_compatibility_version, has_avx=cpu_has_avx())
    _merge_and_pull(sb, "3.7.11")
    cycle_containers(sb.client, sb.integration, health_timeout=120, stability_window=3)
    with sb.mongo() as m:
        assert server_info(m).version.startswith("5.0")
        assert server_info(m).feature_compatibility_version == "4.4"  # not yet: new binary, old FCV
        assert finish_mongo_hop(m, "5.0") == "5.0"
        assert mongo_snapshot(m) == before
    assert _images(sb)["mender-mongo"] == "mongo:5.0"


def test_mongo_hop_refused_before_anything_stops_when_fcv_is_behind(sandbox):
    sb = stack.up("3.6.5", log=lambda m: None)
    with sb.mongo() as m:
        m.admin.command({"setFeatureCompatibilityVersion": "4.2"})
        fcv = server_info(m).feature_compatibility_version
    with pytest.raises(MongoHopRefused) as err:
        check_mongo_hop("4.4", "5.0", fcv, has_avx=True)
    assert "featureCompatibilityVersion is 4.2" in str(err.value)
    assert "setFeatureCompatibilityVersion" in err.value.hint
