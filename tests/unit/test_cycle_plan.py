"""Which services a container cycle recreates (pure: no Docker)."""

from __future__ import annotations

from mender_upgrade.tasks.containers import CyclePlan, RunningService, is_mender_image, plan_cycle

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
