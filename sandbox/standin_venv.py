"""Create `.sandbox/venv-standin`: Python 3.13 with the mongo stand-in's packages, so the
stand-in server also runs on the host (unit tests of the stand-in and of the cleanup)."""

from __future__ import annotations

import subprocess
import sys

from mender_upgrade.sandbox.home import STANDINS, SandboxHome
from mender_upgrade.sandbox.images import _python313


def ensure_standin_venv(home: SandboxHome | None = None) -> str:
    home = home or SandboxHome.default()
    venv = home.root / "venv-standin"
    python = venv / "bin" / "python"
    requirements = STANDINS / "mongo" / "requirements.txt"
    stamp = venv / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements.read_text():
        return str(python)
    subprocess.run([_python313(), "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                    str(requirements)], check=True)
    stamp.write_text(requirements.read_text())
    return str(python)


if __name__ == "__main__":
    print(ensure_standin_venv(), file=sys.stderr)
