"""MongoDB major steps between Mender releases: one major at a time, FCV before and after.

mongod N+1 refuses data whose featureCompatibilityVersion is older than N ("UPGRADE PROBLEM:
Found an invalid featureCompatibilityVersion document"), and mongo >= 5.0 needs AVX.
"""

from __future__ import annotations

from pathlib import Path

from pymongo import MongoClient

from mender_upgrade.tasks.errors import UpgradeError
from mender_upgrade.tasks.mongo import server_info, set_feature_compatibility_version

MAJORS = ["3.4", "3.6", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0"]


class MongoHopRefused(UpgradeError):
    """The MongoDB major change cannot be done safely as planned."""


def cpu_has_avx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    return any(line.startswith("flags") and "avx" in line.split(":", 1)[-1].split()
               for line in cpuinfo.read_text().splitlines())


def check_mongo_hop(old: str, new: str, fcv: str | None, has_avx: bool) -> None:
    """Refuse a hop that skips a major, starts from the wrong FCV, or lacks AVX for >= 5.0."""
    for value in (old, new):
        if value not in MAJORS:
            raise MongoHopRefused(f"unknown MongoDB major {value!r}", f"known: {', '.join(MAJORS)}")
    steps = MAJORS.index(new) - MAJORS.index(old)
    if steps > 1:
        between = MAJORS[MAJORS.index(old) + 1:MAJORS.index(new)]
        raise MongoHopRefused(f"MongoDB {old} -> {new} skips major(s) {', '.join(between)}",
                              "upgrade mongo one major at a time, setting the FCV after each")
    if steps < 0:
        raise MongoHopRefused(f"MongoDB {old} -> {new} is a downgrade", "restore a backup of the older release instead")
    if fcv != old:
        raise MongoHopRefused(f"featureCompatibilityVersion is {fcv}, expected {old} before moving to {new}",
                              f"run db.adminCommand({{setFeatureCompatibilityVersion: '{old}'}}) and try again")
    if float(new) >= 5.0 and not has_avx:
        raise MongoHopRefused(f"MongoDB {new} needs a CPU with AVX and this one has none",
                              "stay on MongoDB 4.4 (Mender 3.6) or move to a host with AVX")


def finish_mongo_hop(client: MongoClient, new: str) -> str:
    """After the new stack is healthy: set FCV to the new major and read it back."""
    set_feature_compatibility_version(client, new)
    fcv = server_info(client).feature_compatibility_version
    if fcv != new:
        raise UpgradeError(f"featureCompatibilityVersion reads {fcv} after setting {new}", "check the mongo log")
    return fcv
