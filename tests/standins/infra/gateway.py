#!/usr/bin/env python3
"""Stand-in for the Mender gateways: api-gateway (2.6, openresty), traefik (2.7+), storage-proxy.

STANDIN_GATEWAY=api-gateway|traefik|storage-proxy (baked into each image) picks the routes.
A reverse proxy with the real path prefixes (see the compose labels and traefik config of the
integration repository); the arguments (traefik's `--entrypoints…`) are accepted and ignored.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KIND = os.environ.get("STANDIN_GATEWAY", "traefik")
# (path regex, backend host, port, auth middleware or None): the real routers' rules.
ROUTES: list[tuple[str, str, int, str | None]] = [
    (r"/api/management/v\d+/useradm/auth/login", "mender-useradm", 8080, None),
    (r"/api/management/v\d+/useradm", "mender-useradm", 8080, "userauth"),
    (r"/api/devices/v\d+/authentication", "mender-device-auth", 8080, None),
    (r"/api/management/v\d+/devauth", "mender-device-auth", 8080, "userauth"),
    (r"/api/devices/v\d+/deployments/download", "mender-deployments", 8080, None),
    (r"/api/devices/v\d+/deployments", "mender-deployments", 8080, "devauth"),
    (r"/api/management/v\d+/deployments", "mender-deployments", 8080, "userauth"),
    (r"/api/devices/v\d+/inventory", "mender-inventory", 8080, "devauth"),
    (r"/api/management/v\d+/inventory", "mender-inventory", 8080, "userauth"),
    (r"/api/devices/v\d+/deviceconnect", "mender-deviceconnect", 8080, "devauth"),
    (r"/api/management/v\d+/deviceconnect", "mender-deviceconnect", 8080, "userauth"),
    (r"/api/devices/v\d+/deviceconfig", "mender-deviceconfig", 8080, "devauth"),
    (r"/api/management/v\d+/deviceconfig", "mender-deviceconfig", 8080, "userauth"),
    (r"/api/management/v\d+/iot-manager", "mender-iot-manager", 8080, "userauth"),
    # Enterprise (config/traefik/traefik.enterprise.yaml): self-service sign-up without a login
    (r"/api/management/v\d+/tenantadm/tenants/(trial|signup)", "mender-tenantadm", 8080, None),
    (r"/api/management/v\d+/tenantadm", "mender-tenantadm", 8080, "userauth"),
    (r"/api/management/v\d+/auditlogs", "mender-auditlogs", 8080, "userauth"),
    (r"/api/devices/v\d+/devicemonitor", "mender-devicemonitor", 8080, "devauth"),
    (r"/api/management/v\d+/devicemonitor", "mender-devicemonitor", 8080, "userauth"),
    (r"/", "mender-gui", 80, None),
]
STORAGE = ("minio", 9000)
TRAEFIK_CONFIG = Path("/etc/traefik/config")
CERT_DIRS = {"api-gateway": ["/var/www/mendersoftware/cert"],
             "traefik": ["/etc/traefik/certs", "/certs"],
             "storage-proxy": ["/var/www/storage-proxy/cert"]}
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade"}


def allowed_hosts() -> list[str] | None:
    """The hosts traefik's check-hostname middleware lets through (3.2+ config), else None."""
    hosts = os.environ.get("ALLOWED_HOSTS", "").replace(" ", "")
    if KIND != "traefik" or not hosts or not TRAEFIK_CONFIG.is_dir():
        return None
    if not any("check-hostname" in f.read_text(errors="replace") for f in TRAEFIK_CONFIG.glob("*.y*ml")):
        return None
    return hosts.split(",")


def is_storage_request(handler: BaseHTTPRequestHandler) -> bool:
    """The minio router's rule in the real traefik files (2.7 labels, 3.x traefik.minio.yaml)."""
    if KIND == "storage-proxy":
        return True
    if KIND != "traefik":
        return False
    host = (handler.headers.get("Host") or "").split(":")[0]
    storage_url = os.environ.get("STORAGE_URL", "s3.docker.mender.io")
    return (host == storage_url or handler.headers.get("X-Forwarded-Host") == storage_url
            or bool(handler.headers.get("X-Amz-Date")) or "X-Amz-Date=" in handler.path
            or handler.path.startswith("/mender-artifact-storage"))


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _json(self, status: int, error: str) -> None:
        body = json.dumps({"error": error}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        hosts = allowed_hosts()
        if hosts is not None and (self.headers.get("Host") or "").split(":")[0] not in hosts:
            return self._json(502, "Bad Host")
        if is_storage_request(self):
            return self._forward(*STORAGE)
        path = self.path.split("?")[0]
        for pattern, host, port, auth in ROUTES:
            if re.match(pattern, path):
                if auth and not self.headers.get("Authorization"):
                    return self._json(401, "Unauthorized")
                return self._forward(host, port)
        self._json(404, "Not Found")

    def _forward(self, host: str, port: int) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError:
            return self._json(502, "Bad Gateway")
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_HEADERS | {"content-length"}:
                self.send_header(k, v)
        data_len = resp.getheader("Content-Length")
        if data_len is not None:
            self.send_header("Content-Length", data_len)
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            while chunk := resp.read(1 << 20):
                self.wfile.write(chunk)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class Redirect(Proxy):
    def _handle(self) -> None:
        # traefik's http entrypoint redirects to https; openresty's too
        host = (self.headers.get("Host") or "localhost").split(":")[0]
        self.send_response(301)
        self.send_header("Location", f"https://{host}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


def tls_context() -> ssl.SSLContext | None:
    for d in CERT_DIRS[KIND]:
        cert, key = Path(d, "cert.crt"), Path(d, "private.key")
        if cert.is_file() and key.is_file():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                # the fixture repository mounts PEM-looking placeholders: serve plain HTTP then
                print(f"stand-in {KIND}: {cert} unusable ({exc}); serving without TLS", flush=True)
                return None
            return ctx
    return None


def serve(port: int, handler: type, ctx: ssl.SSLContext | None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    if ctx is not None:
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    print(f"stand-in {KIND} started with args: {' '.join(sys.argv[1:])}", flush=True)
    ctx = tls_context()
    if KIND == "storage-proxy":
        serve(9000, Proxy, ctx)
    else:
        serve(80, Redirect if ctx else Proxy, None)
        if ctx is not None:
            serve(443, Proxy, ctx)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
