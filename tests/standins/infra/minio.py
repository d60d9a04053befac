#!/usr/bin/env python3
"""Stand-in for `minio server DIR` (FS mode): path-style S3 objects as files under DIR.

GET/HEAD/PUT/DELETE of `/<bucket>/<key>`, a bucket listing (ListObjectsV2-ish XML) and
`/minio/health/live` on :9000. Signatures are not checked; the sandbox's clients are its own.
"""

from __future__ import annotations

import shutil
import signal
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(sys.argv[-1] if len(sys.argv) > 2 and sys.argv[1] == "server" else "/export")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _target(self) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if any(p in ("..", ".") for p in parts) or (parts and parts[0].startswith(".")):
            return None
        return ROOT.joinpath(*parts) if parts else ROOT

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/xml") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path in ("/minio/health/live", "/minio/health/ready"):
            return self._reply(200, b"", "text/plain")
        target = self._target()
        if target is None or not target.exists():
            return self._reply(404, b"<Error><Code>NoSuchKey</Code></Error>")
        if target.is_dir():
            keys = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
            body = "".join(f"<Contents><Key>{escape(k)}</Key></Contents>" for k in keys)
            return self._reply(200, f"<ListBucketResult>{body}</ListBucketResult>".encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()
        if self.command != "HEAD":
            with open(target, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        target = self._target()
        if target is None or target == ROOT:
            return self._reply(400, b"<Error><Code>InvalidRequest</Code></Error>")
        length = int(self.headers.get("Content-Length", "0"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                f.write(chunk)
                length -= len(chunk)
        self._reply(200)

    def do_DELETE(self) -> None:
        target = self._target()
        if target is not None and target.is_file():
            target.unlink()
        self._reply(204)


def main() -> None:
    print(f"stand-in minio started with args: {' '.join(sys.argv[1:])}", flush=True)
    server = ThreadingHTTPServer(("0.0.0.0", 9000), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
