"""The layers stay one-way: config <- workflows <- escalations <- review <- api.

import-linter reads every import, function-local ones included, against the contracts in
pyproject.toml ([tool.importlinter]). A function-local import of a project module is only
allowed with a comment saying why (an import cycle, a heavy module only one path needs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("config", "workflows", "escalations", "review", "api")
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # In a process of its own: the test process has zope.interface loaded (by daphne), whose
    # class attributes break import-linter's reading of its own contract classes.
    return subprocess.run(
        [sys.executable, "-c", LINT, "--config", str(config), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_point_one_way():
    result = lint_imports(ROOT / "pyproject.toml", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_layer_check_catches_the_engine_importing_escalations(tmp_path):
    # A copy of the contract over a tiny tree with the very cycle issue 15 found.
    for package, source in {
        "workflows": "",
        "workflows/engine": "from escalations.actions import escalate_action\n",
        "escalations": "",
        "escalations/actions": "def escalate_action(): ...\n",
        "review": "",
        "api": "",
    }.items():
        path = tmp_path / (package + ".py" if "/" in package else package + "/__init__.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    config = tmp_path / "layers.toml"
    config.write_text(
        textwrap.dedent(
            """
            [tool.importlinter]
            root_packages = ["workflows", "escalations", "review", "api"]

            [[tool.importlinter.contracts]]
            name = "layers"
            type = "layers"
            layers = ["api", "review", "escalations", "workflows"]
            """
        )
    )
    result = lint_imports(config, tmp_path)
    assert result.returncode == 1
    assert "workflows.engine -> escalations.actions" in result.stdout


def _unexplained_local_imports(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                project = node.level > 0 or (node.module or "").split(".")[0] in APPS
            elif isinstance(node, ast.Import):
                project = any(a.name.split(".")[0] in APPS for a in node.names)
            else:
                continue
            # The reason sits in the comment just above the import's block of imports.
            i = node.lineno - 2
            while i >= 0 and (
                not lines[i].strip() or lines[i].strip().startswith(("from ", "import "))
            ):
                i -= 1
            if project and not (i >= 0 and lines[i].strip().startswith("#")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("app", APPS)
def test_no_function_local_import_of_a_project_module_without_a_reason(app):
    unexplained = [
        where
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts
        for where in _unexplained_local_imports(path)
    ]
    assert unexplained == []
