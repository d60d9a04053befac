"""Backup throughput and memory on the sandbox, side by side with what an operator would run.

    .venv/bin/python bench/backup_bench.py [--mib 1024] [--rounds 3]

Needs `mender-upgrade sandbox up`. For each round, in alternating order: our backup (volume
tar through Docker's archive API, hashed, multipart to S3, plus a mongodump), the docs'
pipeline `docker run --rm -v VOL:/from IMAGE tar c -C /from . | aws s3 cp - s3://...`, the same
with `--log-driver none`, and the ceiling (archive API -> boto3's transfer manager, no
hashing). Prints medians, ratios and our peak RSS. A figure printer, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import docker

from mender_upgrade.sandbox import stack
from mender_upgrade.sandbox.home import REPO_ROOT

AWSCLI_VENV = REPO_ROOT / ".sandbox" / "venv-awscli"


def aws_cli() -> str:
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli==1.46.3"], check=True)
    return str(aws)


def fill_volume(client, image: str, name: str, mib: int) -> None:
    try:
        client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    client.volumes.create(name, labels={stack.SANDBOX_LABEL: "bench"})
    client.containers.run(image, entrypoint=["/bin/sh", "-c"], command=[f"head -c {mib * 2**20} /dev/urandom > /d/data.bin"],
                          volumes={name: {"bind": "/d", "mode": "rw"}}, remove=True, log_config={"type": "none"})


def run_child(argv: list[str], env: dict | None = None) -> tuple[float, int, dict]:
    """Run a process; return wall seconds, its peak RSS in KiB, and its JSON output if any."""
    start = time.monotonic()
    env = (env or dict(os.environ)) | {"BENCH_SPAWN": repr(time.time())}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} failed: {err[-800:]}")
    data = json.loads(out.strip().splitlines()[-1]) if out.strip().startswith("{") else {}
    return time.monotonic() - start, usage.ru_maxrss, data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rss-mib", type=int, nargs="*", default=[256])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sb = stack.attach()
    client = docker.from_env(timeout=600)
    # The docs run `tar` from a small image (alpine); here the busybox stand-in base.
    image = "mender-upgrade-standin/busybox"
    aws = aws_cli()
    env = os.environ | {"AWS_ACCESS_KEY_ID": sb.s3.access_key, "AWS_SECRET_ACCESS_KEY": sb.s3.secret_key,
                        "AWS_DEFAULT_REGION": "us-east-1"}
    volume = f"bench-{args.mib}"
    fill_volume(client, image, volume, args.mib)
    py = [sys.executable, str(REPO_ROOT / "bench" / "backup_one.py")]
    methods = {
        "ours": lambda k: run_child(py + ["ours", volume, k]),
        "boto3 transfer manager": lambda k: run_child(py + ["ceiling", volume, k]),
        "docs": lambda k: run_child(["bash", "-o", "pipefail", "-c",
                                     f"docker run --rm -v {volume}:/from {image} tar c -C /from . | "
                                     f"{aws} s3 cp - s3://{sb.s3.bucket}/bench/{k} --endpoint-url {sb.s3.url}"], env),
        "docs --log-driver none": lambda k: run_child(["bash", "-o", "pipefail", "-c",
                                     f"docker run --rm --log-driver none -v {volume}:/from {image} tar c -C /from . | "
                                     f"{aws} s3 cp - s3://{sb.s3.bucket}/bench/{k} --endpoint-url {sb.s3.url}"], env),
    }
    size = args.mib * 2**20
    rates: dict[str, list[float]] = {m: [] for m in methods}
    rss: list[int] = []
    dumps: list[str] = []
    order = list(methods)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):  # alternate to spread drift evenly
            seconds, maxrss, data = methods[name](f"r{r}-{name.replace(' ', '')}")
            volume_seconds = data.get("volume_seconds", seconds)
            rates[name].append(size / 2**20 / volume_seconds)
            if name == "ours":
                rss.append(maxrss)
                dumps.append(f"{data['dump_bytes'] / 2**20:.1f} MiB in {data['dump_seconds']:.1f} s")
            print(f"round {r + 1} {name:24s} {rates[name][-1]:7.1f} MiB/s  ({seconds:.1f} s, peak RSS {maxrss / 1024:.0f} MiB)",
                  flush=True)
    med = {m: statistics.median(v) for m, v in rates.items()}
    print(f"\n{args.mib} MiB incompressible volume (+ mongodump in 'ours'), medians of {args.rounds} alternating rounds:")
    for m, v in med.items():
        print(f"  {m:24s} {v:7.1f} MiB/s")
    print(f"  ours / docs pipeline            {med['ours'] / med['docs']:.2f}x   (target >= 3)")
    print(f"  ours / --log-driver none        {med['ours'] / med['docs --log-driver none']:.2f}x   (target >= 1.0)")
    print(f"  ours / boto3 transfer manager   {med['ours'] / med['boto3 transfer manager']:.2f}x   (the ceiling; target >= 0.9)")
    print(f"  ours' mongodump of the seed, after the volume: {', '.join(dumps)}")
    print(f"  ours peak RSS at {args.mib} MiB: {max(rss) / 1024:.0f} MiB (max of {len(rss)} runs)")
    for mib in args.rss_mib:
        small = f"bench-{mib}"
        fill_volume(client, image, small, mib)
        peaks = [run_child(py + ["ours", small, f"rss{mib}-{i}"])[1] for i in range(args.rounds)]
        print(f"  ours peak RSS at {mib} MiB: {max(peaks) / 1024:.0f} MiB (max of {len(peaks)} runs)")
        client.volumes.get(small).remove(force=True)
    client.volumes.get(volume).remove(force=True)
    sb.s3.client().delete_objects(Bucket=sb.s3.bucket, Delete={"Objects": [
        {"Key": o["Key"]} for o in sb.s3.client().list_objects_v2(Bucket=sb.s3.bucket, Prefix="bench/").get("Contents", [])]})


if __name__ == "__main__":
    main()
