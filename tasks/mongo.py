"""The running `mender-mongo`: where it is, what it runs, what it holds (pymongo)."""

from __future__ import annotations

from dataclasses import dataclass

import docker
from pymongo import MongoClient
from pymongo.errors import ConfigurationError, PyMongoError

from mender_upgrade.tasks.containers import PROJECT, project_states
from mender_upgrade.tasks.errors import TransientError, UpgradeError

MONGO_SERVICE = "mender-mongo"
SYSTEM_DATABASES = ("admin", "local", "config")


class MongoUnreachable(TransientError):
    """mender-mongo does not answer."""


class MongoTooOld(UpgradeError):
    """The server's wire version is below what the installed pymongo speaks: waiting cannot help."""


class MongoNotRunning(UpgradeError):
    """mender-mongo is stopped or missing: nothing brings it back by waiting, so no retry."""


def mongo_container(client: docker.DockerClient, project: str = PROJECT):
    state = project_states(client, project).get(MONGO_SERVICE)
    if state is None or state.status in ("exited", "created", "dead"):
        raise MongoNotRunning(f"the {MONGO_SERVICE} service of project {project!r} is not running "
                              f"({state.status if state else 'no container'})",
                              "start it with `./run up -d mender-mongo`")
    if state.status != "running":  # restarting, paused: it may come back by itself
        raise MongoUnreachable(f"the {MONGO_SERVICE} service of project {project!r} is {state.status}",
                               "wait for it, or start it with `./run up -d mender-mongo`")
    return client.containers.get(state.container_id)


def mongo_url(client: docker.DockerClient, project: str = PROJECT) -> str:
    """mongodb:// URL of mender-mongo on its compose network, found by labels (never by name)."""
    container = mongo_container(client, project)
    networks = container.attrs["NetworkSettings"]["Networks"]
    address = next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)
    if not address:
        raise MongoUnreachable(f"{MONGO_SERVICE} has no network address", "check `docker inspect` of the container")
    return f"mongodb://{address}:27017/"


def connect(url: str, timeout_ms: int = 8000) -> MongoClient:
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
    except ConfigurationError as exc:
        client.close()
        if "wire version" not in str(exc):
            raise
        raise MongoTooOld(f"MongoDB at {_without_credentials(url)} is too old for this tool's driver: {exc}",
                          "upgrade Mender by hand to a release running MongoDB 4.4 or later (2.5+), "
                          "then run mender-upgrade") from exc
    except PyMongoError as exc:
        client.close()
        raise MongoUnreachable(f"MongoDB at {_without_credentials(url)} does not answer: {exc.__class__.__name__}",
                               "check that mender-mongo runs and the URL is right") from exc
    return client


def _without_credentials(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@dataclass(frozen=True)
class MongoInfo:
    version: str
    feature_compatibility_version: str | None


def server_info(client: MongoClient) -> MongoInfo:
    version = client.server_info()["version"]
    try:
        fcv = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
        value = fcv["featureCompatibilityVersion"]
        fcv_version = value.get("version") if isinstance(value, dict) else str(value)
    except PyMongoError:
        fcv_version = None
    return MongoInfo(version, fcv_version)


def collection_counts(client: MongoClient) -> dict[str, dict[str, int]]:
    """Documents per collection of every non-system database."""
    counts: dict[str, dict[str, int]] = {}
    for name in sorted(client.list_database_names()):
        if name in SYSTEM_DATABASES:
            continue
        db = client[name]
        counts[name] = {c: db[c].count_documents({}) for c in sorted(db.list_collection_names())}
    return counts


def set_feature_compatibility_version(client: MongoClient, version: str) -> None:
    try:
        client.admin.command({"setFeatureCompatibilityVersion": version})
    except PyMongoError as exc:
        raise UpgradeError(f"setting featureCompatibilityVersion {version} failed: {exc}",
                           "check the mongo log; the data is unchanged") from exc


def wait_for_mongo(url: str, timeout_s: float = 60) -> None:
    """Wait for a freshly started server to accept connections."""
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect(url, timeout_ms=2000).close()
            return
        except MongoUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
