"""Unavailability of the tool's quiet period versus the documented procedure, seen from outside.

    PYTHONPATH=. .venv/bin/python bench/unavailability_bench.py [--mib 1024] [--change 0.01] [--rounds 3]
        [--first-round N] [--record FILE]
    PYTHONPATH=. .venv/bin/python bench/unavailability_bench.py --summary FILE

Needs `mender-upgrade sandbox up`. `--first-round` and `--record` split the rounds over several
sandbox sessions (round N keeps its place in the alternation; figures are appended to FILE as
JSON lines); `--summary FILE` prints the medians of what FILE holds, per size. The artifact volume is filled to `--mib` MiB; each round
changes `--change` of it (a new file) while the server serves, then redeploys the same release:

- tool: hot pre-copy of the volumes (server serving), the change, then the quiet period: stop
  the writers, mongodump + volume delta (verified, to the sandbox's S3), `cycle_containers`
  (recreates what changes; mongo, minio and the gateway keep running when unchanged) through its
  health gate with the gateway smoke, as the flow runs it; its parts are printed;
- documented: the change, then stop the writers, `mongodump --archive --gzip` and
  `docker run --rm --log-driver none -v VOL:/from IMAGE tar c` of every volume to local files,
  `./run stop`, `./run rm -f`, `./run up -d`, wait until every service is healthy.

One prober thread, every 0.5 s, asks the gateway as users reach it (127.0.0.1:443 under the
operator's server name) for the management login, expecting 401 (useradm answers through it),
and calls the deployments and useradm internal health endpoints (:8080). Unavailability = first failing probe until the first probe after which all pass again.
Rounds alternate the order; medians are printed. A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.integration_fixture import OPERATOR_GATEWAY_HOST
from mender_upgrade.tasks.backup import writer_services
from mender_upgrade.tasks.containers import compose_services, cycle_containers, project_states, run_compose, wait_until_healthy
from mender_upgrade.tasks.precopy import finish_backup, pre_copy
from mender_upgrade.tasks.service_health import INTERNAL_HEALTH_PATHS, call
from mender_upgrade.tasks.settings import BackupSettings

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
        try:
            networks = self.sb.client.containers.get(state.container_id).attrs["NetworkSettings"]["Networks"]
        except docker.errors.NotFound:  # replaced since it was listed
            return None
        return next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), None)

    def _ok(self) -> bool:
        login = call("127.0.0.1", 443, "/api/management/v1/useradm/auth/login", method="POST", tls=True,
                     host=OPERATOR_GATEWAY_HOST, timeout=1)
        if login.status != 401:
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


def _in_minio(sb, script: str) -> None:
    code, out = _minio(sb).exec_run(["sh", "-c", f"set -e; {script}"])
    if code != 0:
        raise RuntimeError(f"{script!r} in the minio container failed (exit {code}): {out.decode(errors='replace')[-300:]}")


def fill_artifacts(sb, mib: int) -> None:
    _in_minio(sb, f"mkdir -p {ARTIFACTS}; rm -f {ARTIFACTS}/bench-*; "
                  f"head -c {mib * 2**20} /dev/urandom > {ARTIFACTS}/bench-base.bin")


def change_artifacts(sb, mib: float) -> None:
    """A new upload of `mib` MiB, and the previous round's removed."""
    _in_minio(sb, f"rm -f {ARTIFACTS}/bench-upload-*; head -c {int(mib * 2**20)} /dev/urandom "
                  f"> {ARTIFACTS}/bench-upload-{uuid.uuid4().hex[:6]}.bin")


def tool(sb, store, change_mib: float) -> dict[str, float]:
    pre = pre_copy(sb.client, sb.integration, store, uuid.uuid4().hex, log=lambda m: None)
    change_artifacts(sb, change_mib)
    with Prober(sb) as prober:
        start = time.monotonic()
        writers = writer_services(sb.client, sb.integration)
        run_compose(sb.integration, ["stop", *writers])
        stopped = time.monotonic() - start
        t = time.monotonic()
        quiet = finish_backup(sb.client, sb.integration, store, pre, keep_last=1, log=lambda m: None)
        backup = time.monotonic() - t
        t = time.monotonic()
        cycle = cycle_containers(sb.client, sb.integration, stability_window=0, smoke=True)
        plan = time.monotonic() - t - sum(v for k, v in cycle.step_seconds.items() if k != "health")
        measured = cycle.healthy_at - start
    # Peak RSS of this process, which ran the pre-copy and the quiet period (and the prober).
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"probed": prober.unavailable_s(), "measured": measured, "dump": quiet.seconds["dump"],
            "delta": quiet.seconds["delta"], "backup other": backup - quiet.seconds["dump"] - quiet.seconds["delta"],
            "stop writers": stopped, "cycle plan": plan,
            **{f"cycle {k}": v for k, v in cycle.step_seconds.items() if k != "health"}, "gate": cycle.gate_s,
            "pre-copy": pre.seconds, "pre-copy MiB/s": pre.rate / 2**20,
            "peak RSS MiB": peak_mib}


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


def summary(record: Path) -> None:
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    for mib in sorted({r["mib"] for r in rows}):
        at = [r for r in rows if r["mib"] == mib]

        def median(name: str, key: str) -> float:
            return statistics.median(r["figures"][key] for r in at if r["name"] == name)

        rounds = len({r["round"] for r in at})
        t, d = median("tool", "probed"), median("documented", "probed")
        dump = median("tool", "dump")
        print(f"\n{mib} MiB artifact volume, {at[0]['change']:.0%} changed, medians of {rounds} alternating rounds:")
        for r in sorted(at, key=lambda r: (r["round"], r["name"])):
            print(f"  round {r['round']} {r['name']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["figures"].items()))
        print(f"documented procedure: unavailable {d:.1f} s (dump {median('documented', 'dump'):.1f} s)")
        print(f"tool: unavailable {t:.1f} s (dump {dump:.1f} s, delta {median('tool', 'delta'):.1f} s, "
              f"quiet period {median('tool', 'measured'):.1f} s; hot pre-copy beforehand "
              f"{median('tool', 'pre-copy'):.1f} s at {median('tool', 'pre-copy MiB/s'):.1f} MiB/s; "
              f"peak RSS {max(r['figures']['peak RSS MiB'] for r in at if r['name'] == 'tool'):.0f} MiB)")
        print(f"unavailability {t / d:.2f}x the documented procedure (target <= 0.25x); quiet period "
              f"{median('tool', 'measured'):.1f} s vs mongodump + 10 s = {dump + 10:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024, help="artifact volume size")
    parser.add_argument("--change", type=float, default=0.01, help="share of it changed between pre-copy and quiet period")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-round", type=int, default=1, help="number of the first round (its place in the alternation)")
    parser.add_argument("--record", type=Path, help="append each round's figures to this file (JSON lines)")
    parser.add_argument("--summary", type=Path, help="only print the medians of a --record file")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    sb = stack.attach()
    stack.mark_dirty(sb)
    settings = BackupSettings(target=f"s3://{sb.s3.bucket}/bench-{uuid.uuid4().hex[:6]}", endpoint_url=sb.s3.url,
                              access_key_id=sb.s3.access_key, secret_access_key=sb.s3.secret_key)
    store = settings.open_store("bench")
    fill_artifacts(sb, args.mib)
    folder = Path(tempfile.mkdtemp(prefix="unavailability-bench-"))
    try:
        for r in range(args.first_round, args.first_round + args.rounds):
            for name in (["documented", "tool"] if r % 2 == 1 else ["tool", "documented"]):
                figures = (tool(sb, store, args.mib * args.change) if name == "tool"
                           else documented(sb, args.mib * args.change, folder))
                print(f"round {r} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
                if args.record:
                    with open(args.record, "a") as out:
                        out.write(json.dumps({"mib": args.mib, "change": args.change, "round": r, "name": name,
                                              "figures": figures}) + "\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _minio(sb).exec_run(["sh", "-c", f"rm -f {ARTIFACTS}/bench-*"])


if __name__ == "__main__":
    main()
