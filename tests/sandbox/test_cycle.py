"""The container cycle through the operator's ./run: health gate, downtime, orphans, MongoDB
major hops and automatic rollback, on the sandbox."""

from __future__ import annotations

import pytest

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.releases import Release
from mender_upgrade.tasks.containers import cycle_containers, is_mender_image, project_states, pull_images, wait_until_healthy
from mender_upgrade.tasks.errors import HealthGateFailed
from mender_upgrade.tasks.service_health import HEALTH_LABEL, INTERNAL_HEALTH_PATHS
from mender_upgrade.tasks.mongo import server_info
from mender_upgrade.tasks.mongo_upgrade import (
    MongoHopRefused,
    check_mongo_hop,
    cpu_has_avx,
    finish_mongo_hop,
)
from mender_upgrade.tasks.repository import fetch_tags, open_integration, update_repository
from tests.sandbox.conftest import mongo_snapshot

pytestmark = pytest.mark.sandbox


def _merge_and_pull(sandbox, target: str) -> str:
    repo = open_integration(sandbox.integration)
    fetch_tags(repo)
    [hop] = update_repository(repo, [target])
    pull_images(sandbox.integration)
    return hop.merge.pre_upgrade_marker


def _images(sandbox) -> dict[str, str]:
    return {s: st.image for s, st in project_states(sandbox.client).items()}


def test_gate_names_a_running_service_that_does_not_answer_and_a_gateway_that_does_not_route(sandbox):
    services = sorted(project_states(sandbox.client))
    passed = wait_until_healthy(sandbox.client, services, timeout=60, stability_window=0)
    assert sorted(passed.answers) == sorted(set(services) & INTERNAL_HEALTH_PATHS.keys())
    assert all(a.ok for a in passed.answers.values()), passed.answers

    inventory = sandbox.client.containers.get(passed.states["mender-inventory"].container_id)
    assert inventory.exec_run(["killall", "-STOP", "httpd"]).exit_code == 0  # hung: accepts, never answers
    try:
        with pytest.raises(HealthGateFailed) as err:
            wait_until_healthy(sandbox.client, services, timeout=4, stability_window=0)
    finally:
        inventory.exec_run(["killall", "-CONT", "httpd"])
    ip = passed.states["mender-inventory"].ip
    assert (f"mender-inventory: running; GET http://{ip}:8080/api/internal/v1/inventory/health "
            "answered timed out after 3 s") in err.value.message
    assert "read `./run logs mender-inventory` for why" in err.value.message
    assert "mender-deployments" not in err.value.message

    # The fixture's gateway stand-in answers nothing on 443: the smoke says so, route by route.
    with pytest.raises(HealthGateFailed) as err:
        wait_until_healthy(sandbox.client, services, timeout=3, stability_window=0, smoke=True)
    message = err.value.message
    assert "gateway: management login (POST /api/management/v1/useradm/auth/login): connection refused, expected 401" in message
    assert "gateway: device authentication" in message
    assert "artifact storage" not in message  # 2.6: devices reach storage on :9000, not through the gateway
    assert "`./run logs mender-api-gateway`" in message
    wait_until_healthy(sandbox.client, services, timeout=60, stability_window=0)  # serving again


def test_good_upgrade_removes_the_storage_proxy_orphan_and_records_downtime(sandbox):
    stack.mark_dirty(sandbox)
    with sandbox.mongo() as m:
        before = mongo_snapshot(m)
    assert "storage-proxy" in _images(sandbox)
    _merge_and_pull(sandbox, "2.7.2")
    before_start = {s: sandbox.client.containers.get(st.container_id).attrs["State"]["StartedAt"]
                    for s, st in project_states(sandbox.client).items()}
    report = cycle_containers(sandbox.client, sandbox.integration, health_timeout=120, stability_window=3, smoke=False)
    assert _images(sandbox) == Release("2.7.2").images()  # storage-proxy gone, traefik gateway
    assert all(state.startswith("running/") for state in report.services.values()), report.services
    # 2.7 sets no health labels: the table's paths were probed, and answered.
    for service, path in INTERNAL_HEALTH_PATHS.items():
        if service in report.services:
            assert f"{path} HTTP 200" in report.services[service], report.services
    assert report.gateway == []  # the fixture's gateway routes nothing: the smoke is not asked for
    assert 0 < report.downtime_s < 120
    assert set(report.step_seconds) == {"stop", "up", "health"}  # the writers ran: one stop, one up
    # mongo and minio run the same image and configuration in both releases: never stopped;
    # every Mender service and the new gateway were created again.
    after = {s: (st.container_id, sandbox.client.containers.get(st.container_id).attrs["State"]["StartedAt"])
             for s, st in project_states(sandbox.client).items()}
    old, new = Release("2.6.4").images(), Release("2.7.2").images()
    same_third_party = sorted(s for s, image in new.items() if old.get(s) == image and not is_mender_image(image))
    assert "mender-mongo" in same_third_party and sorted(report.kept) == same_third_party
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
    cycle_containers(sb.client, sb.integration, health_timeout=120, stability_window=3, smoke=False)
    with sb.mongo() as m:
        assert server_info(m).version.startswith("5.0")
        assert server_info(m).feature_compatibility_version == "4.4"  # not yet: new binary, old FCV
        assert finish_mongo_hop(m, "5.0") == "5.0"
        assert mongo_snapshot(m) == before
    assert _images(sb)["mender-mongo"] == "mongo:5.0"
    # From 3.0 the compose files label the API services: the gate probed the labels' paths.
    labelled = {s: sb.client.containers.get(st.container_id).labels.get(HEALTH_LABEL)
                for s, st in project_states(sb.client).items()}
    assert {s: p for s, p in labelled.items() if p} == {
        s: p for s, p in INTERNAL_HEALTH_PATHS.items() if s in labelled}
    assert {s: st.health_path for s, st in project_states(sb.client).items() if st.health_path} == \
        {s: p for s, p in labelled.items() if p}


def test_mongo_hop_refused_before_anything_stops_when_fcv_is_behind(sandbox):
    sb = stack.up("3.6.5", log=lambda m: None)
    with sb.mongo() as m:
        m.admin.command({"setFeatureCompatibilityVersion": "4.2"})
        fcv = server_info(m).feature_compatibility_version
    with pytest.raises(MongoHopRefused) as err:
        check_mongo_hop("4.4", "5.0", fcv, has_avx=True)
    assert "featureCompatibilityVersion is 4.2" in str(err.value)
    assert "setFeatureCompatibilityVersion" in err.value.hint

