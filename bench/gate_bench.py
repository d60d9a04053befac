"""What the health gate's HTTP probes cost, on the sandbox.

    PYTHONPATH=. .venv/bin/python bench/gate_bench.py [--rounds 50] [--cycles 3]

Prints the median (and slowest) time of one health probe per service, of one gate poll with
and without the probes, and the cycle's health step and downtime (same release restarted).
"""

from __future__ import annotations

import argparse
import statistics
import time

from mender_upgrade.sandbox import stack
from mender_upgrade.tasks import service_health
from mender_upgrade.tasks.containers import cycle_containers, project_states


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    sb = stack.attach()
    states = project_states(sb.client)
    targets = {s: (st.ip, st.health_path) for s, st in states.items() if st.health_path}
    for service, (ip, path) in sorted(targets.items()):
        answers = [service_health.call(ip, service_health.HEALTH_PORT, path) for _ in range(args.rounds)]
        assert all(a.ok for a in answers), answers[-1]
        print(f"probe {service} {path}: {_ms([a.seconds for a in answers])}")
    docker_only, with_probes = [], []
    for _ in range(args.rounds):
        t = time.monotonic()
        polled = project_states(sb.client)
        docker_only.append(time.monotonic() - t)
        service_health.probe_health({s: (polled[s].ip, polled[s].health_path) for s in targets})
        with_probes.append(time.monotonic() - t)
    print(f"gate poll, Docker state only: {_ms(docker_only)}")
    print(f"gate poll with {len(targets)} HTTP probes: {_ms(with_probes)}")
    for r in range(args.cycles):
        report = cycle_containers(sb.client, sb.integration, stability_window=0, smoke=False)
        print(f"cycle {r + 1}: health step {report.step_seconds['health']:.1f} s, downtime {report.downtime_s:.1f} s, "
              f"steps {', '.join(f'{k} {v:.1f} s' for k, v in report.step_seconds.items())}")


if __name__ == "__main__":
    main()
