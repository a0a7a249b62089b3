"""docs/settings.md against the code: every environment variable read is documented, with the
files that read it and its default; nothing documented is read nowhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "settings.md"
APP_DIRS = ("config", "workflows", "escalations", "review", "api")
# Not reads of the deployment's environment: the helpers themselves, and the test settings
# (which only set defaults for the suite).
SKIP = {"config/settings/env.py", "config/settings/test.py"}
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list", "env_url"}
UNSET = object()


def _constant(node: ast.expr) -> object:
    """A literal default (256 * 1024 included), or UNSET when it is computed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _constant(node.left), _constant(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return left * right
    return UNSET


def _is_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def python_reads() -> dict[str, dict[str, object]]:
    """{variable: {file: literal default or UNSET}} for every env read in the app's code."""
    reads: dict[str, dict[str, object]] = {}
    files = [ROOT / "manage.py"] + [p for d in APP_DIRS for p in (ROOT / d).rglob("*.py")]
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in SKIP or "/migrations/" in rel:
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            name: object = None
            default: object = UNSET
            if isinstance(node, ast.Call):
                func = node.func
                args = node.args
                if isinstance(func, ast.Name) and func.id in ENV_HELPERS and args:
                    name = args[0].value if isinstance(args[0], ast.Constant) else None
                    if len(args) > 1:
                        default = _constant(args[1])
                    for kw in node.keywords:
                        if kw.arg == "default":
                            default = _constant(kw.value)
                elif (
                    isinstance(func, ast.Attribute)
                    and func.attr == "get"
                    and _is_environ(func.value)
                    and args
                    and isinstance(args[0], ast.Constant)
                ):
                    name = args[0].value
                    if len(args) > 1:
                        default = _constant(args[1])
                elif (
                    isinstance(func, ast.Attribute)
                    and func.attr == "getenv"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "os"
                    and args
                    and isinstance(args[0], ast.Constant)
                ):
                    name = args[0].value
            elif (
                isinstance(node, ast.Subscript)
                and _is_environ(node.value)
                and isinstance(node.ctx, ast.Load)
                and isinstance(node.slice, ast.Constant)
            ):
                name = node.slice.value
            if isinstance(name, str) and name != "DJANGO_SETTINGS_MODULE":
                reads.setdefault(name, {})[rel] = default
    return reads


def all_reads() -> dict[str, dict[str, object]]:
    # config/supervisord.conf reads only what `manage.py serve` sets for it (serve.py reads
    # the deployment's variables, so they are found above).
    return python_reads()


def documented() -> dict[str, tuple[str, set[str]]]:
    """{variable: (default column, files in the "read by" column)} from docs/settings.md."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in REFERENCE.read_text().splitlines():
        match = re.match(r"\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            name, default, read_by = match[1], match[2].strip(), match[3]
            assert name not in rows, f"{name} is documented twice"
            files = set(re.findall(r"`([^`]+)`", re.sub(r"\(.*?\)", "", read_by)))
            rows[name] = (default, files)
    return rows


def test_the_reference_finds_what_it_checks():
    # The parsers must see something, or an empty table would agree with empty code.
    reads = all_reads()
    assert {"SECRET_KEY", "DATABASE_URL", "PORT", "WORKER_CONCURRENCY"} <= set(reads)
    assert reads["API_MAX_BODY_BYTES"] == {"config/settings/security.py": 256 * 1024}
    assert len(documented()) >= 40


def test_every_variable_read_is_documented():
    missing = sorted(set(all_reads()) - set(documented()))
    assert not missing, f"read but not in docs/settings.md: {missing}"


def test_every_documented_variable_is_read():
    unread = sorted(set(documented()) - set(all_reads()))
    assert not unread, f"in docs/settings.md but read nowhere: {unread}"


def test_the_reference_names_every_file_that_reads_each_variable():
    reads = all_reads()
    wrong = {
        name: (sorted(files), sorted(reads[name]))
        for name, (_, files) in documented().items()
        if name in reads and files != set(reads[name])
    }
    assert not wrong, f"'read by' differs from the code (documented, actual): {wrong}"


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_the_documented_defaults_are_the_codes():
    wrong = {}
    for name, (default, _) in documented().items():
        for rel, value in all_reads().get(name, {}).items():
            if value is UNSET or value == "" or isinstance(value, list):
                continue  # computed, or "none": the prose says what happens
            if f"`{_shown(value)}`" not in default:
                wrong[name] = (default, rel, value)
    assert not wrong, f"defaults differ from the code (documented, file, code): {wrong}"


def test_the_readme_points_at_the_reference():
    assert "docs/settings.md" in (ROOT / "README.md").read_text()
