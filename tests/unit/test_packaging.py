"""The installed import names: tasks/, flows/, sandbox/ and deployments/ are installed as
mender_upgrade.tasks etc., so a folder holding a tasks.py (a common Prefect file name, and where a
process worker runs) cannot shadow them; a built wheel works without the checkout and says clearly
that the sandbox needs one."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SHADOWS = ("tasks", "flows", "sandbox", "deployments")


def _shadowing_folder(tmp_path: Path) -> Path:
    """A worker's folder: a module named like each source folder, which fails loudly if imported."""
    folder = tmp_path / "worker"
    folder.mkdir()
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(f"raise ImportError('the worker folder\\'s {name}.py was imported')\n")
    return folder


def _env() -> dict[str, str]:
    return os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def test_a_folder_with_tasks_py_does_not_shadow_the_installed_flows(tmp_path: Path) -> None:
    folder = _shadowing_folder(tmp_path)
    # `python -c` puts the current folder first on sys.path, as a process worker does.
    imported = subprocess.run(
        [sys.executable, "-c", "import mender_upgrade.flows.upgrade as u, mender_upgrade.flows.drill as d;"
                               "print(u.upgrade_mender.name, d.restore_drill_flow.name, u.__file__)"],
        cwd=folder, env=_env(), capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    name, drill, module_file = imported.stdout.split()
    assert (name, drill) == ("upgrade-mender", "restore-drill")
    assert Path(module_file) == REPO / "flows" / "upgrade.py"  # the editable install maps the source folder

    version = subprocess.run([str(VENV_BIN / "mender-upgrade"), "--version"], cwd=folder, env=_env(),
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("mender-upgrade ")
    from_folder = subprocess.run([sys.executable, "-c", "from mender_upgrade.flows.cli import app; app()", "--version"],
                                 cwd=folder, env=_env(), capture_output=True, text=True, timeout=60)
    assert (from_folder.returncode, from_folder.stdout) == (0, version.stdout), from_folder.stderr


def test_a_built_wheel_runs_without_the_checkout_and_refuses_the_sandbox_clearly(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("mender_upgrade-*.whl")
    target = tmp_path / "site"  # the wheel alone, with this venv's dependencies behind it
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in (target / "mender_upgrade").iterdir()) == sorted(SHADOWS)
    assert not (target / "tasks").exists() and not (target / "tests").exists()

    folder = _shadowing_folder(tmp_path)
    # -I: no user site, no PYTHONPATH from outside, and not the worker folder: only the wheel and
    # the venv's site-packages (whose editable finder would map the checkout: -S leaves .pth out).
    site = sysconfig.get_paths()["purelib"]
    script = ("import sys; sys.path[:0] = [{target!r}, {site!r}]; sys.path.insert(0, '');"
              "sys.argv = ['mender-upgrade', *{args!r}];"
              "import mender_upgrade.flows.cli as cli; assert cli.__file__.startswith({target!r}), cli.__file__;"
              "cli.app()")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = script.format(target=str(target), site=site, args=args)
        return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=folder, env=_env(),
                              capture_output=True, text=True, timeout=120)

    version = cli("--version")
    assert (version.returncode, version.stdout.strip()) == (0, "mender-upgrade 0.1.0"), version.stderr
    for command in (["sandbox", "status"], ["demo", "--yes"]):
        refused = cli(*command)
        assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
        assert "the sandbox needs a source checkout of mender-upgrade" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (target / ".sandbox").exists() and not (target / "mender_upgrade" / ".sandbox").exists()
