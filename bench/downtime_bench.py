"""Downtime of the tool's container cycle versus the bare commands, on the sandbox.

    .venv/bin/python bench/downtime_bench.py [--rounds 3]

Both restart the same release through the clone's ./run, alternating: the tool's
`cycle_containers` (stop, rm -f, up -d --remove-orphans, health gate), and by hand
`./run stop && ./run rm -f && ./run up -d`, then waiting until every service is healthy.
Downtime = first stop until all services healthy (the tool's stability window excluded).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.containers import compose_services, cycle_containers, wait_until_healthy


def bare(sb) -> float:
    services = compose_services(sb.integration)
    start = time.monotonic()
    subprocess.run("./run stop && ./run rm -f && ./run up -d", shell=True, check=True,
                   cwd=sb.integration / "production", capture_output=True)
    return wait_until_healthy(sb.client, services, stability_window=0, poll=0.5).healthy_at - start


def tool(sb) -> float:
    return cycle_containers(sb.client, sb.integration, stability_window=0, smoke=False).downtime_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    sb = stack.attach()
    results: dict[str, list[float]] = {"bare": [], "tool": []}
    for r in range(rounds):
        for name in (["bare", "tool"] if r % 2 == 0 else ["tool", "bare"]):
            results[name].append((bare if name == "bare" else tool)(sb))
            print(f"round {r + 1} {name}: {results[name][-1]:.1f} s", flush=True)
    b, t = statistics.median(results["bare"]), statistics.median(results["tool"])
    print(f"\nmedian downtime over {rounds} alternating rounds: bare {b:.1f} s, tool {t:.1f} s")
    print(f"tool = {t / b:.2f}x bare; target <= 1.1x bare + 2 s = {1.1 * b + 2:.1f} s: "
          f"{'met' if t <= 1.1 * b + 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
