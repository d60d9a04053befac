"""The local registry on 127.0.0.1:5000, which dockerd uses as its Docker Hub mirror."""

from __future__ import annotations

import shutil
import urllib.request

from mender_upgrade.sandbox.engine import REGISTRY_PORT
from mender_upgrade.sandbox.home import SandboxHome
from mender_upgrade.sandbox.processes import pid_alive, port_open, start_detached, stop_pid, wait_until

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{REGISTRY_PORT}/v2/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_registry(home: SandboxHome) -> None:
    state = home.read_state()
    if pid_alive(state.get("registry_pid")) and registry_answers():
        return
    if port_open(REGISTRY_PORT):
        raise RuntimeError(f"127.0.0.1:{REGISTRY_PORT} is taken by something that is not the "
                           "sandbox's registry; stop it first")
    root = home.run / "registry"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(CONFIG.format(data=root / "data", port=REGISTRY_PORT))
    log = home.logs / "registry.log"
    pid = start_detached([shutil.which("docker-registry") or "docker-registry", "serve", str(config)], log)
    home.write_state(registry_pid=pid)
    wait_until(registry_answers, 30, "docker-registry", log)


def stop_registry(home: SandboxHome) -> None:
    stop_pid(home.read_state().get("registry_pid"))
