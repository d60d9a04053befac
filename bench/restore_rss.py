"""Peak RSS of the restore's local work on one big file: checking a volume archive entry by
entry with per-file hashes (`digest_tar`, as before anything is stopped) and re-emitting it
checked (`checked_tar_chunks`, the stream Docker's put_archive reads). No Docker needed.

    python bench/restore_rss.py SIZE_MIB
Prints one JSON line: archive bytes, seconds, peak RSS in MiB (of this process).
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import tarfile
import tempfile
import time

from mender_upgrade.tasks.volumes import checked_tar_chunks, digest_tar

VOLUME = "mender-artifacts"


def _write_archive(path: str, size: int) -> None:
    """A volume tar holding one `size`-byte file, written in 1 MiB pieces (never in memory)."""
    block = os.urandom(1024 * 1024)

    class Source(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, target) -> int:
            n = min(len(target), self.left, len(block))
            target[:n] = block[:n]
            self.left -= n
            return n

    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(f"{VOLUME}/release.mender")
        info.size = size
        tar.addfile(info, io.BufferedReader(Source()))


def main(size_mib: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "volume.tar")
        _write_archive(path, size_mib * 1024 * 1024)
        start = time.monotonic()
        with open(path, "rb") as archive:
            digest_tar(archive, volume=VOLUME)
        emitted = 0
        with open(path, "rb") as archive:
            for chunk in checked_tar_chunks(archive, VOLUME):
                emitted += len(chunk)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"archive_bytes": emitted, "seconds": round(time.monotonic() - start, 1),
                      "peak_rss_mib": round(peak, 1)}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
