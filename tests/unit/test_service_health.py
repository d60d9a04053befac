"""The health gate's pure parts (path table, answer classification, gateway expectations, the
failure message) and its HTTP calls against real servers on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from mender_upgrade.tasks import service_health as sh
from mender_upgrade.tasks.containers import ServiceState, _not_serving, _probe


@pytest.mark.parametrize("service, labels, expected", [
    # 3.x: the compose label wins (leading slash added as the demo script's ${path#/} implies)
    ("mender-deployments", {sh.HEALTH_LABEL: "/api/internal/v1/deployments/health"}, "/api/internal/v1/deployments/health"),
    ("mender-workflows-server", {sh.HEALTH_LABEL: "health"}, "/health"),
    ("mender-custom", {sh.HEALTH_LABEL: "/custom/health"}, "/custom/health"),
    # 2.6/2.7: no label, the table by compose service name
    ("mender-device-auth", {}, "/api/internal/v1/devauth/health"),
    ("mender-workflows-server", {"traefik.enable": "true"}, "/health"),
    ("mender-iot-manager", {}, "/api/internal/v1/iot-manager/health"),
    # no HTTP health: probed by Docker state only
    ("mender-mongo", {}, None), ("mender-api-gateway", {}, None), ("mender-workflows-worker", {}, None),
    ("mender-deployments", {sh.HEALTH_LABEL: "  "}, "/api/internal/v1/deployments/health"),
])
def test_health_path(service, labels, expected):
    assert sh.health_path(service, labels) == expected


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (TimeoutError("timed out"), "timed out after 3 s"),
    (socket.timeout(), "timed out after 3 s"),
    (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
    (OSError(113, "No route to host"), "no route to host"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS failed"),
])
def test_classify_error(exc, words):
    assert sh.classify_error(exc, 3.0).startswith(words)


@pytest.mark.parametrize("expect, status, met", [
    (sh.Expect.UNAUTHORIZED, 401, True), (sh.Expect.UNAUTHORIZED, 200, False),
    (sh.Expect.UNAUTHORIZED, 404, False), (sh.Expect.UNAUTHORIZED, None, False),
    (sh.Expect.SERVICE_ANSWERED, 400, True), (sh.Expect.SERVICE_ANSWERED, 403, True),
    (sh.Expect.SERVICE_ANSWERED, 404, False), (sh.Expect.SERVICE_ANSWERED, 502, False),
    (sh.Expect.SERVICE_ANSWERED, None, False),
])
def test_expectations(expect, status, met):
    answer = sh.Answer(status, None if status else "connection refused", 0.01)
    assert expect.met_by(answer) is met


@pytest.mark.parametrize("env, host", [
    ({"DEPLOYMENTS_AWS_URI": "https://s3.docker.mender.io"}, "s3.docker.mender.io"),  # 2.7 after the alias patch
    ({"DEPLOYMENTS_AWS_URI": "https://s3.docker.mender.io:9000"}, None),  # 2.6: storage-proxy on :9000
    ({"DEPLOYMENTS_AWS_URI": "http://minio:9000", "DEPLOYMENTS_AWS_EXTERNAL_URI": "https://s3.acme.org"}, "s3.acme.org"),
    ({"DEPLOYMENTS_AWS_URI": "http://minio:9000"}, None),
    ({}, None),
])
def test_storage_host_behind_gateway(env, host):
    found, why_not = sh.storage_host_behind_gateway(env)
    assert found == host
    assert bool(why_not) is (host is None)


def _state(service, status="running", health=None, restarts=0, cid="c1", path=None):
    return ServiceState(service, cid, "img", status, health, restarts, "172.18.0.9", path)


def test_failure_message_names_each_failing_service_with_its_answer():
    states = {"mender-deployments": _state("mender-deployments", path="/api/internal/v1/deployments/health"),
              "mender-inventory": _state("mender-inventory", status="restarting", restarts=4),
              "mender-mongo": _state("mender-mongo"),
              "mender-useradm": _state("mender-useradm", path="/api/internal/v1/useradm/health")}
    answers = {"mender-deployments": sh.Answer(None, "connection refused", 0.001),
               "mender-useradm": sh.Answer(200, None, 0.002)}
    first_seen = {"mender-inventory": ("c1", 1)}
    message = _not_serving(25, [*states, "mender-gui"], states, answers, first_seen, None)
    assert message.startswith("services not healthy after 25 s:")
    assert ("mender-deployments: running; GET http://172.18.0.9:8080/api/internal/v1/deployments/health "
            "answered connection refused") in message
    assert "mender-inventory: restarting, restarted 3 times during the gate" in message
    assert "mender-gui: no container" in message
    assert "mender-useradm" not in message and "mender-mongo" not in message
    assert "read `./run logs mender-deployments mender-inventory mender-gui` for why" in message


def test_failure_message_names_the_gateway_routes_that_failed():
    route = sh.GATEWAY_ROUTES[0]
    checks = [sh.RouteCheck(route, sh.Answer(404, None, 0.01)),
              sh.RouteCheck(sh.GATEWAY_ROUTES[2], None, "devices reach storage at https://s3:9000")]
    message = _not_serving(60, ["mender-api-gateway"], {"mender-api-gateway": _state("mender-api-gateway")},
                           {}, {}, checks)
    assert "gateway: management login (POST /api/management/v1/useradm/auth/login): HTTP 404, expected 401" in message
    assert "artifact storage" not in message  # skipped is not failed
    assert "`./run logs mender-api-gateway`" in message


class _Mender(BaseHTTPRequestHandler):
    """Answers as Mender's services do behind the gateway: by Host and path."""

    def _answer(self) -> None:
        if self.headers["Host"].split(":")[0] == "s3.example.test":
            status = 403  # minio: anonymous access denied
        elif self.path == "/api/management/v1/useradm/auth/login":
            status = 401
        elif self.path == "/api/devices/v1/authentication/auth_requests":
            status = 400
        elif self.path == "/api/internal/v1/deployments/health":
            status = 204
        elif self.path == "/broken/health":
            status = 503
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_server(tmp_path: Path):
    """(plain HTTP port, TLS port), both on 127.0.0.1."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=gateway.test",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "1"],
                   check=True, capture_output=True)
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _Mender)
    tls = ThreadingHTTPServer(("127.0.0.1", 0), _Mender)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield plain.server_address[1], tls.server_address[1]
    for server in (plain, tls):
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_call_answers(local_server):
    plain, _ = local_server
    assert sh.call("127.0.0.1", plain, "/api/internal/v1/deployments/health").status == 204
    assert sh.call("127.0.0.1", plain, "/api/internal/v1/deployments/health").ok
    broken = sh.call("127.0.0.1", plain, "/broken/health")
    assert (broken.status, broken.ok, str(broken)) == (503, False, "HTTP 503")
    refused = sh.call("127.0.0.1", _closed_port(), "/health")
    assert (refused.status, str(refused)) == (None, "connection refused")


def test_call_times_out_on_a_server_that_never_answers():
    with socket.socket() as silent:  # accepts connections (backlog) but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        answer = sh.call("127.0.0.1", silent.getsockname()[1], "/health", timeout=0.5)
    assert str(answer) == "timed out after 0.5 s"
    assert 0.4 < answer.seconds < 2


def test_smoke_through_a_tls_gateway(local_server):
    _, tls = local_server
    checks = sh.smoke_gateway("127.0.0.1", "gateway.test", "s3.example.test", port=tls)
    assert [(c.route.name, str(c.answer), c.ok) for c in checks] == [
        ("management login", "HTTP 401", True), ("device authentication", "HTTP 400", True),
        ("artifact storage", "HTTP 403", True)]


def test_smoke_fails_where_the_gateway_does_not_route_or_speak_tls(local_server):
    plain, tls = local_server
    # storage under the server's own name: the gateway's 404, not the storage's answer
    checks = sh.smoke_gateway("127.0.0.1", "gateway.test", "gateway.test", port=tls)
    assert [c.ok for c in checks] == [True, True, False]
    assert "HTTP 404, expected an answer of the service" in str(checks[2])
    no_tls = sh.smoke_gateway("127.0.0.1", None, None, "no storage behind the gateway", port=plain)
    assert [c.ok for c in no_tls[:2]] == [False, False] and str(no_tls[0].answer).startswith("TLS failed")
    assert str(no_tls[2]) == "artifact storage: skipped (no storage behind the gateway)"
    refused = sh.smoke_gateway("127.0.0.1", None, None, port=_closed_port())
    assert str(refused[0]).endswith("connection refused, expected 401")


def test_a_running_container_without_an_address_fails_its_probe_unasked():
    states = {"mender-useradm": ServiceState("mender-useradm", "c1", "img", "running", None, 0, None,
                                             "/api/internal/v1/useradm/health"),
              "mender-mongo": _state("mender-mongo"),
              "mender-inventory": _state("mender-inventory", status="exited", path="/api/internal/v1/inventory/health")}
    answers = _probe(states, list(states))
    assert list(answers) == ["mender-useradm"]  # mongo has no path, inventory does not run
    assert str(answers["mender-useradm"]) == "no address on the compose network"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_own_health_test_with_the_engine_gone_is_a_plain_no(tmp_path):
    """dockerd restarting under the gate (the fault matrix's API-error case): the engine's socket
    is gone; the in-container test counts as not passed, with no traceback from its thread."""
    from mender_upgrade.tasks.containers import ServiceState, own_health_test_passes
    gone = docker.DockerClient(base_url=f"unix://{tmp_path}/docker.sock", version="1.41")
    state = ServiceState("minio", "0" * 64, "minio/minio", "running", "starting", 0, health_test=("CMD", "true"))
    assert own_health_test_passes(gone, state) is False
