"""One backup stream in its own process (so its peak RSS is its own): ours or the ceiling.

    python bench/backup_one.py ours|ceiling VOLUME KEY
Prints one JSON line: bytes, seconds. Credentials come from the sandbox state.
"""

from __future__ import annotations

import json
import os
import sys
import time

import docker

from mender_upgrade.sandbox import stack
from mender_upgrade.tasks.backup import dump_mongo_to_store, stream_volume_to_store
from mender_upgrade.tasks.mongo import mongo_container
from mender_upgrade.tasks.settings import BackupSettings
from mender_upgrade.tasks.volumes import IterStream, volume_tar_stream


def main(kind: str, volume: str, key: str) -> None:
    sb = stack.attach()
    client = docker.from_env(timeout=600)
    mongo = mongo_container(client)
    image = mongo.attrs["Config"]["Image"]
    settings = BackupSettings(target=f"s3://{sb.s3.bucket}/bench", endpoint_url=sb.s3.url,
                              access_key_id=sb.s3.access_key, secret_access_key=sb.s3.secret_key)
    start = time.monotonic()
    if kind == "ours":
        store = settings.open_store()
        receipt = stream_volume_to_store(client, image, volume, store, key)
        size = receipt.size
        # The volume's figure counts from the spawn of this process (interpreter start included),
        # as the shell pipelines' figures include starting docker and the aws CLI.
        volume_done = time.time() - float(os.environ.get("BENCH_SPAWN", time.time()))
        dump_start = time.monotonic()
        dump = dump_mongo_to_store(mongo.id, store, key + ".mongo.gz")
        extra = {"volume_seconds": volume_done, "dump_bytes": dump.size, "dump_seconds": time.monotonic() - dump_start}
    else:  # the ceiling: Docker's archive API straight into boto3's own transfer manager
        from boto3.s3.transfer import TransferConfig
        s3 = sb.s3.client()
        counted = {"n": 0}

        def chunks():
            for chunk in volume_tar_stream(client, image, volume):
                counted["n"] += len(chunk)
                yield chunk

        s3.upload_fileobj(IterStream(chunks()), sb.s3.bucket, "bench/" + key,
                          Config=TransferConfig(multipart_chunksize=16 * 2**20, max_concurrency=4))
        size, extra = counted["n"], {}
    print(json.dumps({"bytes": size, "seconds": time.monotonic() - start} | extra))


if __name__ == "__main__":
    main(*sys.argv[1:4])
