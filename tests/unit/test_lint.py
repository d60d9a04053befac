"""ruff and mypy stay clean on tasks/ and flows/ (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKED = ("tasks", "flows")


def test_ruff_is_clean_on_tasks_and_flows() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_tasks_and_flows(tmp_path: Path) -> None:
    # mypy cannot follow setuptools' editable import hook, so it reads the package as installed:
    # mender_upgrade/<folder> links to each source folder, in a tree of its own.
    tree = tmp_path / "tree"
    (tree / "mender_upgrade").mkdir(parents=True)
    for folder in ("tasks", "flows", "sandbox", "deployments"):
        (tree / "mender_upgrade" / folder).symlink_to(REPO / folder, target_is_directory=True)
    packages = [arg for folder in CHECKED for arg in ("-p", f"mender_upgrade.{folder}")]
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                             "--cache-dir", str(tmp_path / "cache"), *packages], cwd=tree,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
