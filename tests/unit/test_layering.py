"""The layering the code promises: steps in `tasks/` know nothing of the flows, deployments or
CLI that compose them, and every Prefect task wrapper lives in tasks/steps.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[2] / "tasks"
UPPER_LAYERS = {"flows", "deployments"}


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "mender_upgrade" and len(parts) > 1 else parts[0]


def _task_decorated(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if (isinstance(target, ast.Name) and target.id == "task") or \
                        (isinstance(target, ast.Attribute) and target.attr == "task"):
                    names.append(node.name)
    return names


MODULES = sorted(TASKS.glob("*.py"))


def test_the_check_sees_the_modules_and_both_kinds_of_import():
    assert len(MODULES) > 20
    tree = ast.parse("import mender_upgrade.flows.upgrade\nfrom deployments import definitions\n"
                     "def f():\n    from mender_upgrade.flows.report import RunReport\n"
                     "@task(name='x')\ndef g(): pass\n")
    assert [_layer(m) for _, m in _imported_modules(tree)] == ["flows", "deployments", "flows"]
    assert _task_decorated(tree) == ["g"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_tasks_never_import_flows_or_deployments(path: Path):
    wrong = [f"{path.name}:{line} imports {module}" for line, module in _imported_modules(ast.parse(path.read_text()))
             if _layer(module) in UPPER_LAYERS]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "steps.py"], ids=lambda p: p.name)
def test_prefect_task_wrappers_live_in_steps(path: Path):
    assert _task_decorated(ast.parse(path.read_text())) == [], f"move the @task wrappers of {path.name} to tasks/steps.py"
