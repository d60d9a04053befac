"""Which services a container cycle recreates (pure: no Docker)."""

from __future__ import annotations

from dataclasses import replace

from mender_upgrade.tasks.containers import (
    CyclePlan,
    RunningService,
    ServiceState,
    _exec_argv,
    cycle_commands,
    health_waited,
    is_mender_image,
    plan_cycle,
)

SERVICES = ["mender-api-gateway", "mender-deployments", "mender-mongo", "mender-nats", "minio"]
IMAGES = {"mender-api-gateway": "traefik:v2.4", "mender-deployments": "mendersoftware/deployments:mender-2.7.2",
          "mender-mongo": "mongo:4.4", "mender-nats": "nats:2.1.9-alpine3.12",
          "minio": "minio/minio:RELEASE.2019-04-23T23-50-36Z"}


def _running(**overrides) -> dict[str, RunningService]:
    out = {s: RunningService(image=IMAGES[s], image_id=f"sha256:{s}", config_hash=f"h-{s}") for s in SERVICES}
    out.update(overrides)
    return out


def _hashes(**overrides) -> dict[str, str]:
    return {s: f"h-{s}" for s in SERVICES} | overrides


def _ids(**overrides) -> dict[str, str]:
    return {IMAGES[s]: f"sha256:{s}" for s in SERVICES} | overrides


def test_unchanged_third_party_services_keep_running_and_mender_services_always_cycle():
    plan = plan_cycle(SERVICES, _hashes(), _running(), _ids())
    assert plan == CyclePlan(recreate=["mender-deployments"],
                             keep=["mender-api-gateway", "mender-mongo", "mender-nats", "minio"])


def test_a_changed_configuration_recreates_the_service():
    plan = plan_cycle(SERVICES, _hashes(minio="h-new-healthcheck"), _running(), _ids())
    assert "minio" in plan.recreate and "minio" not in plan.keep


def test_a_pulled_image_under_the_same_name_recreates_the_service():
    plan = plan_cycle(SERVICES, _hashes(), _running(), _ids(**{"mongo:4.4": "sha256:repulled"}))
    assert "mender-mongo" in plan.recreate


def test_a_service_not_running_or_new_in_the_release_is_created():
    running = _running()
    del running["mender-nats"]
    plan = plan_cycle([*SERVICES, "mender-iot-manager"], _hashes(), running, _ids())
    assert {"mender-nats", "mender-iot-manager"} <= set(plan.recreate)


def test_mender_images_are_recognised_under_every_registry_spelling():
    assert is_mender_image("mendersoftware/deviceauth:mender-3.7.11")
    assert is_mender_image("registry.mender.io/mendersoftware/tenantadm:mender-3.7.11")
    assert is_mender_image("docker.io/mendersoftware/gui:mender-3.8.5")
    assert not is_mender_image("mongo:5.0") and not is_mender_image("traefik:v2.10")


PLAN = CyclePlan(recreate=["mender-deployments", "mender-gui"], keep=["mender-api-gateway", "mender-mongo"])
ALL = sorted([*PLAN.recreate, *PLAN.keep])


def test_in_the_quiet_period_the_stopped_writers_are_not_stopped_again_and_one_up_recreates_them():
    assert cycle_commands(PLAN, ALL, running={"mender-api-gateway", "mender-mongo"}, closed=False) == [
        ("up", ["up", "-d", "--no-deps", "--force-recreate", "--remove-orphans", "mender-deployments", "mender-gui"])]


def test_whatever_changes_and_still_runs_stops_together_first():
    running = {"mender-api-gateway", "mender-mongo", "mender-deployments", "mender-gui"}
    commands = cycle_commands(PLAN, ALL, running=running, closed=False)
    assert commands[0] == ("stop", ["stop", "mender-deployments", "mender-gui"])
    assert [name for name, _ in commands] == ["stop", "up"]


def test_a_closed_hop_stops_the_running_gateway_and_does_not_start_it():
    services = [s for s in ALL if s != "mender-api-gateway"]
    plan = CyclePlan(recreate=PLAN.recreate, keep=["mender-mongo"])
    commands = cycle_commands(plan, services, running={"mender-api-gateway", "mender-mongo"}, closed=True)
    assert commands[0] == ("stop", ["stop", "mender-api-gateway"])
    assert "mender-api-gateway" not in commands[1][1]


def test_nothing_to_recreate_still_removes_orphans_without_recreating_anything():
    plan = CyclePlan(recreate=[], keep=ALL)
    assert cycle_commands(plan, ALL, running=set(ALL), closed=False) == [
        ("up", ["up", "-d", "--no-deps", "--remove-orphans", *ALL])]


# `./run config` of the real 2.6.4 files, abridged: storage-proxy waits for minio's health.
CONFIG_264 = """
services:
  minio:
    image: minio/minio:RELEASE.2018-09-25T21-34-43Z
  storage-proxy:
    image: openresty/openresty:1.13.6.2-0-alpine
    depends_on:
      minio:
        condition: service_healthy
  mender-deployments:
    image: mendersoftware/deployments:mender-2.6.4
    depends_on:
      mender-mongo:
        condition: service_started
      storage-proxy:
        condition: service_started
  mender-mongo:
    image: mongo:4.4
version: '2.1'
"""


def test_a_recreated_minio_starts_in_its_own_call_so_compose_does_not_hold_its_dependents():
    waited = health_waited(CONFIG_264)
    assert waited == {"minio"}
    plan = CyclePlan(recreate=["mender-deployments", "minio", "storage-proxy"], keep=["mender-mongo"])
    commands = cycle_commands(plan, sorted([*plan.recreate, *plan.keep]), running=set(), closed=False, waited=waited)
    args = ["up", "-d", "--no-deps", "--force-recreate", "--remove-orphans"]
    assert commands == [("up", [*args, "minio"]), ("up dependents", [*args, "mender-deployments", "storage-proxy"])]


def test_list_form_depends_on_waits_for_nothing():
    assert health_waited("services:\n  a:\n    depends_on: [b]\n  b: {}\n") == set()


def test_the_gate_runs_a_healthcheck_test_as_docker_does():
    assert _exec_argv(("CMD", "wget", "-q", "127.0.0.1")) == ["wget", "-q", "127.0.0.1"]
    assert _exec_argv(("CMD-SHELL", "curl -f localhost || exit 1")) == ["/bin/sh", "-c", "curl -f localhost || exit 1"]
    assert _exec_argv(("NONE",)) is None and _exec_argv(()) is None


def test_a_starting_service_counts_only_once_its_own_test_passed():
    starting = ServiceState("mender-gui", "c1", "mendersoftware/gui:mender-2.7.2", "running", "starting", 0,
                            health_test=("CMD", "wget", "127.0.0.1"))
    assert not starting.ok
    assert replace(starting, own_test_passed=True).ok
    assert not replace(starting, health="unhealthy", own_test_passed=True).ok
