"""What Mender's own tooling sees of a running server: each service's internal health endpoint,
and the gateway answering users and devices.

Real Mender images carry no Docker HEALTHCHECK, so "running" says nothing about "serving". From
3.0 the compose files label each API service with `mender.healthcheck.path`, and the
repository's `demo` script probes `http://<container ip>:8080<path>` (its loop breaks after the
first container and never sets the retval it tests, so it checks nothing; here every container
is probed and every answer counts). 2.6 and 2.7 set no labels, but their services serve the
same internal paths: `INTERNAL_HEALTH_PATHS` holds them, keyed by compose service name.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

HEALTH_LABEL = "mender.healthcheck.path"
HEALTH_PORT = 8080
PROBE_TIMEOUT_S = 3.0

# Compose service -> the internal health path the service serves on :8080. Read from the
# `mender.healthcheck.path` labels of the real compose files (3.0.2, 3.6.5, Enterprise files)
# and the paths backend-tests/tests/test_health.py probes;
# 2.7.2's traefik labels name the same path for deployments.
INTERNAL_HEALTH_PATHS: dict[str, str] = {
    "mender-deployments": "/api/internal/v1/deployments/health",
    "mender-device-auth": "/api/internal/v1/devauth/health",
    "mender-inventory": "/api/internal/v1/inventory/health",
    "mender-useradm": "/api/internal/v1/useradm/health",
    "mender-workflows-server": "/health",
    "mender-deviceconnect": "/api/internal/v1/deviceconnect/health",
    "mender-deviceconfig": "/api/internal/v1/deviceconfig/health",
    "mender-iot-manager": "/api/internal/v1/iot-manager/health",
    "mender-auditlogs": "/api/internal/v1/auditlogs/health",
    "mender-devicemonitor": "/api/internal/v1/devicemonitor/health",
    # Enterprise's tenantadm has no label in any release; backend-tests/tests/test_health.py probes it here.
    "mender-tenantadm": "/api/internal/v1/tenantadm/health",
    "mender-reporting": "/api/internal/v1/reporting/health",
}


def health_path(service: str, labels: dict[str, str]) -> str | None:
    """The path to probe on :8080: the compose label where the release sets one, else the
    table's path for this service, else None (no HTTP health: mongo, nats, workers, gateway)."""
    label = labels.get(HEALTH_LABEL, "").strip()
    if label:
        return label if label.startswith("/") else f"/{label}"
    return INTERNAL_HEALTH_PATHS.get(service)


@dataclass(frozen=True)
class Answer:
    """One HTTP call's outcome: a status, or why there was none."""
    status: int | None
    error: str | None  # "connection refused", "timed out after 3 s", ...
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else (self.error or "no answer")


def classify_error(exc: BaseException, timeout: float) -> str:
    """A failed call, in the words an operator reads in the gate's message."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({getattr(exc, 'reason', None) or exc.__class__.__name__})"
    if isinstance(exc, http.client.HTTPException):
        return f"not HTTP ({exc.__class__.__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__


class _Addressed(http.client.HTTPConnection):
    """HTTP(S) to `address`, naming `host` in SNI and the Host header (as a device resolving
    the server's name to this container would)."""

    def __init__(self, address: str, host: str, port: int, timeout: float, tls: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout)
        self._address, self._tls = address, tls
        if tls:
            self.default_port = 443  # the Host header names the port only when it is not https's

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host) if self._tls else sock


def _unverified() -> ssl.SSLContext:
    # The gateway's certificate is made for the server's public name and signed by the
    # operator's own CA: what is checked here is the answer, not the certificate.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def call(address: str, port: int, path: str, *, method: str = "GET", tls: bool = False,
         host: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> Answer:
    """One HTTP(S) request to `address:port` under the name `host` (default: the address),
    bounded by `timeout`; never raises for a network failure, the Answer says what happened."""
    start = time.monotonic()
    conn = _Addressed(address, host or address, port, timeout, _unverified() if tls else None)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        return Answer(conn.getresponse().status, None, time.monotonic() - start)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, classify_error(exc, timeout), time.monotonic() - start)
    finally:
        conn.close()


def probe_health(targets: dict[str, tuple[str, str]], timeout: float = PROBE_TIMEOUT_S) -> dict[str, Answer]:
    """GET `http://<ip>:8080<path>` for each service -> (ip, path), all at once (one slow
    service must not hold the others' answers back)."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        futures = {s: pool.submit(call, ip, HEALTH_PORT, path, timeout=timeout) for s, (ip, path) in targets.items()}
        return {s: f.result() for s, f in futures.items()}


class Expect(Enum):
    """What a route must answer for users and devices to be served."""
    UNAUTHORIZED = "401"
    SERVICE_ANSWERED = "an answer of the service (not 404 from the gateway, not 5xx)"

    def met_by(self, answer: Answer) -> bool:
        if answer.status is None:
            return False
        if self is Expect.UNAUTHORIZED:
            return answer.status == 401
        return answer.status != 404 and answer.status < 500


@dataclass(frozen=True)
class GatewayRoute:
    name: str
    method: str
    path: str
    expect: Expect
    storage: bool = False  # sent under the storage host name devices get in artifact links


# The calls users and devices make first, without credentials: each must reach its service
# through the gateway (https on 443, the port every release's prod.yml publishes).
GATEWAY_ROUTES: tuple[GatewayRoute, ...] = (
    GatewayRoute("management login", "POST", "/api/management/v1/useradm/auth/login", Expect.UNAUTHORIZED),
    GatewayRoute("device authentication", "POST", "/api/devices/v1/authentication/auth_requests",
                 Expect.SERVICE_ANSWERED),
    GatewayRoute("artifact storage", "GET", "/", Expect.SERVICE_ANSWERED, storage=True),
)
GATEWAY_PORT = 443


@dataclass(frozen=True)
class RouteCheck:
    route: GatewayRoute
    answer: Answer | None  # None: not applicable here (`skipped` says why)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.answer is None or self.route.expect.met_by(self.answer)

    def __str__(self) -> str:
        r = self.route
        if self.answer is None:
            return f"{r.name}: skipped ({self.skipped})"
        verdict = "ok" if self.ok else f"expected {r.expect.value}"
        return f"{r.name} ({r.method} {r.path}): {self.answer}, {verdict}"


def storage_host_behind_gateway(deployments_env: dict[str, str]) -> tuple[str | None, str]:
    """The storage host name devices use, when the gateway serves it (https, no other port):
    from 2.7 with the alias patch. Returns (host or None, why not)."""
    uri = deployments_env.get("DEPLOYMENTS_AWS_EXTERNAL_URI") or deployments_env.get("DEPLOYMENTS_AWS_URI", "")
    if not uri:
        return None, "deployments names no storage URI"
    parts = urlsplit(uri)
    if parts.scheme != "https" or parts.port not in (None, GATEWAY_PORT) or not parts.hostname:
        return None, f"devices reach storage at {uri}, not through the gateway"
    return parts.hostname, ""


def smoke_gateway(gateway_ip: str, server_name: str | None, storage_host: str | None, storage_skip: str = "",
                  routes: tuple[GatewayRoute, ...] = GATEWAY_ROUTES, port: int = GATEWAY_PORT,
                  timeout: float = PROBE_TIMEOUT_S) -> list[RouteCheck]:
    """Call each route through the gateway as a user or device would."""
    checks = []
    for route in routes:
        if route.storage and storage_host is None:
            checks.append(RouteCheck(route, None, storage_skip))
            continue
        host = storage_host if route.storage else server_name
        checks.append(RouteCheck(route, call(gateway_ip, port, route.path, method=route.method, tls=True,
                                             host=host, timeout=timeout)))
    return checks
