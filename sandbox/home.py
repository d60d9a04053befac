"""Where the sandbox keeps its state: one folder, ignored by git, removed by `sandbox down`.

Image build inputs are cached by image presence in the Docker engine, not here, so a
`sandbox down` followed by `sandbox up` is a warm start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mender_upgrade.sandbox.processes import SandboxError

REPO_ROOT = Path(__file__).resolve().parent.parent
STANDINS = REPO_ROOT / "tests" / "standins"


def require_checkout() -> None:
    """The sandbox builds its images from tests/standins and keeps its state in the checkout:
    an installed wheel has neither, so it refuses instead of writing into site-packages."""
    if not STANDINS.is_dir():
        raise SandboxError(f"the sandbox needs a source checkout of mender-upgrade ({STANDINS} is missing: "
                           "this is an installed wheel); clone the project and run `bash scripts/dev.sh demo` "
                           "there, or install the checkout with `pip install -e '.[sandbox]'`")


@dataclass(frozen=True)
class SandboxHome:
    root: Path

    @classmethod
    def default(cls) -> "SandboxHome":
        require_checkout()
        return cls(Path(os.environ.get("MENDER_SANDBOX_HOME", REPO_ROOT / ".sandbox")).resolve())

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """Per-`up` data: registry blobs, S3 data, repositories. Removed by `down`."""
        return self.root / "run"

    @property
    def state_file(self) -> Path:
        return self.run / "state.json"

    def read_state(self) -> dict:
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text())

    def write_state(self, **updates: object) -> dict:
        state = self.read_state() | updates
        self.run.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
        return state
