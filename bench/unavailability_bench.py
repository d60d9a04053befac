"""Unavailability of the tool's quiet period versus the documented procedure, seen from outside.

    PYTHONPATH=. .venv/bin/python bench/unavailability_bench.py [--mib 1024] [--change 0.01] [--rounds 3]

Needs `mender-upgrade sandbox up`. The artifact volume is filled to `--mib` MiB; each round
changes `--change` of it (a new file) while the server serves, then redeploys the same release:

- tool: hot pre-copy of the volumes (server serving), the change, then the quiet period: stop
  the writers, mongodump + volume delta (verified, to the sandbox's S3), `cycle_containers`
  (recreates what changes; mongo, minio and the gateway keep running when unchanged);
- documented: the change, then stop the writers, `mongodump --archive --gzip` and
  `docker run --rm --log-driver none -v VOL:/from IMAGE tar c` of every volume to local files,
  `./run stop`, `./run rm -f`, `./run up -d`, wait until every service is healthy.

One prober thread, every 0.5 s, calls the gateway and the deployments and useradm health
endpoints (internal :8080 paths; on the fixture sandbox the gateway stand-in answers on :8080
and routes nothing, on a real stack it is asked for the management login on 443, expecting
401). Unavailability = first failing probe until the first probe after which all pass again.
Rounds alternate the order; medians are printed. A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sandbox import stack
from tasks.backup import writer_services
from tasks.containers import compose_services, cycle_containers, project_states, run_compose, wait_until_healthy
from tasks.precopy import finish_backup, pre_copy
from tasks.service_health import INTERNAL_HEALTH_PATHS, call
from tasks.settings import BackupSettings

PROBED = ("mender-deployments", "mender-useradm")
ARTIFACTS = "/export/mender-artifact-storage"


class Prober:
    """Probes every 0.5 s from its own thread; records (time, all ok)."""

    def __init__(self, sb) -> None:
        self.sb, self.samples, self._stop = sb, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _address(self, service: str) -> str | None:
        state = project_states(self.sb.client).get(service)
        if state is None or state.status != "running":
            return None
        networks = self.sb.client.containers.get(state.container_id).attrs["NetworkSettings"]["Networks"]
        return next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)

    def _ok(self) -> bool:
        gateway = self._address("mender-api-gateway")
        if gateway is None:
            return False
        login = call(gateway, 443, "/api/management/v1/useradm/auth/login", method="POST", tls=True, timeout=1)
        if login.status != 401 and call(gateway, 8080, "/", timeout=1).status is None:
            return False
        for service in PROBED:
            address = self._address(service)
            if address is None or not (call(address, 8080, INTERNAL_HEALTH_PATHS[service], timeout=1).status or 500) < 300:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            self.samples.append((start, self._ok()))
            self._stop.wait(max(0.0, 0.5 - (time.monotonic() - start)))

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.5)  # a few probes after the end: the server must stay up
        self._stop.set()
        self._thread.join()

    def unavailable_s(self) -> float:
        failing = [i for i, (_, ok) in enumerate(self.samples) if not ok]
        if not failing:
            return 0.0
        first, last = failing[0], failing[-1]
        end = self.samples[last + 1][0] if last + 1 < len(self.samples) else self.samples[last][0]
        return end - self.samples[first][0]


def _minio(sb):
    return sb.client.containers.get(project_states(sb.client)["minio"].container_id)


def fill_artifacts(sb, mib: int) -> None:
    _minio(sb).exec_run(["sh", "-c", f"rm -f {ARTIFACTS}/bench-*; head -c {mib * 2**20} /dev/urandom > {ARTIFACTS}/bench-base.bin"])


def change_artifacts(sb, mib: float) -> None:
    """A new upload of `mib` MiB, and the previous round's removed."""
    _minio(sb).exec_run(["sh", "-c", f"rm -f {ARTIFACTS}/bench-upload-*; head -c {int(mib * 2**20)} /dev/urandom "
                                     f"> {ARTIFACTS}/bench-upload-{uuid.uuid4().hex[:6]}.bin"])


def tool(sb, store, change_mib: float) -> dict[str, float]:
    pre = pre_copy(sb.client, sb.integration, store, uuid.uuid4().hex, log=lambda m: None)
    change_artifacts(sb, change_mib)
    with Prober(sb) as prober:
        start = time.monotonic()
        writers = writer_services(sb.client, sb.integration)
        run_compose(sb.integration, ["stop", *writers])
        quiet = finish_backup(sb.client, sb.integration, store, pre, keep_last=1, log=lambda m: None)
        cycle = cycle_containers(sb.client, sb.integration, stability_window=0, smoke=False)
        measured = cycle.healthy_at - start
    return {"probed": prober.unavailable_s(), "measured": measured, "dump": quiet.seconds["dump"],
            "delta": quiet.seconds["delta"], "pre-copy": pre.seconds}


def documented(sb, change_mib: float, folder: Path) -> dict[str, float]:
    change_artifacts(sb, change_mib)
    services = compose_services(sb.integration)
    states = project_states(sb.client)
    mongo = states["mender-mongo"]
    volumes = [m["Name"] for m in sb.client.containers.get(states["minio"].container_id).attrs["Mounts"]
               if m.get("Type") == "volume"]
    with Prober(sb) as prober:
        start = time.monotonic()
        run_compose(sb.integration, ["stop", *writer_services(sb.client, sb.integration)])
        t = time.monotonic()
        with open(folder / "mongo.archive.gz", "wb") as out:
            subprocess.run(["docker", "exec", mongo.container_id, "mongodump", "--archive", "--gzip", "--quiet"],
                           stdout=out, check=True)
        dump = time.monotonic() - t
        for volume in volumes:
            with open(folder / f"{volume}.tar", "wb") as out:
                subprocess.run(["docker", "run", "--rm", "--log-driver", "none", "-v", f"{volume}:/from:ro",
                                "--entrypoint", "tar", mongo.image, "c", "-C", "/from", "."], stdout=out, check=True)
        for args in (["stop"], ["rm", "-f"], ["up", "-d"]):
            run_compose(sb.integration, args)
        healthy = wait_until_healthy(sb.client, services, stability_window=0, smoke=False).healthy_at
    return {"probed": prober.unavailable_s(), "measured": healthy - start, "dump": dump}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024, help="artifact volume size")
    parser.add_argument("--change", type=float, default=0.01, help="share of it changed between pre-copy and quiet period")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sb = stack.attach()
    stack.mark_dirty(sb)
    settings = BackupSettings(target=f"s3://{sb.s3.bucket}/bench-{uuid.uuid4().hex[:6]}", endpoint_url=sb.s3.url,
                              access_key_id=sb.s3.access_key, secret_access_key=sb.s3.secret_key)
    store = settings.open_store("bench")
    fill_artifacts(sb, args.mib)
    folder = Path(tempfile.mkdtemp(prefix="unavailability-bench-"))
    results: dict[str, list[dict[str, float]]] = {"tool": [], "documented": []}
    try:
        for r in range(args.rounds):
            for name in (["documented", "tool"] if r % 2 == 0 else ["tool", "documented"]):
                figures = (tool(sb, store, args.mib * args.change) if name == "tool"
                           else documented(sb, args.mib * args.change, folder))
                results[name].append(figures)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in figures.items()), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _minio(sb).exec_run(["sh", "-c", f"rm -f {ARTIFACTS}/bench-*"])

    def median(name: str, key: str) -> float:
        return statistics.median(f[key] for f in results[name])
    t, d = median("tool", "probed"), median("documented", "probed")
    print(f"\n{args.mib} MiB artifact volume, {args.change:.0%} changed, medians of {args.rounds} alternating rounds:")
    print(f"documented procedure: unavailable {d:.1f} s (dump {median('documented', 'dump'):.1f} s)")
    print(f"tool: unavailable {t:.1f} s (dump {median('tool', 'dump'):.1f} s, delta {median('tool', 'delta'):.1f} s; "
          f"hot pre-copy beforehand {median('tool', 'pre-copy'):.1f} s)")
    print(f"unavailability {t / d:.2f}x the documented procedure (target <= 0.25x); quiet period "
          f"{median('tool', 'measured'):.1f} s vs mongodump + 10 s = {median('tool', 'dump') + 10:.1f} s")


if __name__ == "__main__":
    main()
