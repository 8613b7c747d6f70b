"""The code's shape, read from its syntax trees (nothing is imported, trained or run; milliseconds).

* No function longer than :data:`MAX_FUNCTION_LINES` lines in the library packages: a step reads as short
  named blocks.
* ``train/pipeline.py`` stays an orchestration of at most :data:`MAX_PIPELINE_LINES` lines.
* Library code never imports another package's command-line module (the modules MLproject runs with
  ``python -m``, read from MLproject so the list cannot drift): what two commands share lives in a library
  module both import. And outside the tests nothing imports an entry point's ``main``, ``build_parser`` or
  ``terminate_as_interrupt`` from another module: a command is run as a command, not called as a library.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_PACKAGES = ("features", "train", "evaluation", "models")
IMPORT_CHECKED = (*LIBRARY_PACKAGES, "bench")
MAX_FUNCTION_LINES = 80
MAX_PIPELINE_LINES = 250
COMMAND_LINE_ONLY = ("main", "build_parser", "terminate_as_interrupt")
# The shared command-line helper every entry point builds its main() from (models/cli.py): providing
# these names to the entry points is what it is for.
SHARED_CLI_HELPER = "models.cli"
SKIPPED_DIRS = {".venv", "tests", "node_modules", "mlruns", "build", "dist"}


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def project_files() -> list[Path]:
    """Every Python file of the project outside the tests (and the virtualenv, caches, hidden dirs)."""
    files = []
    for entry in sorted(ROOT.iterdir()):
        if entry.is_file() and entry.suffix == ".py":
            files.append(entry)
        elif entry.is_dir() and entry.name not in SKIPPED_DIRS and not entry.name.startswith("."):
            files += [p for p in entry.rglob("*.py") if not _skipped(p)]
    return sorted(files)


def _skipped(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts[:-1]
    return any(p in SKIPPED_DIRS or p.startswith(".") or p == "__pycache__" for p in parts)


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this project."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def command_line_modules() -> frozenset[str]:
    """The modules MLproject's entry points run (``python -m <module>``)."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))
    commands = [entry["command"] for entry in spec["entry_points"].values()]
    return frozenset(m for command in commands for m in re.findall(r"python\s+-m\s+([\w.]+)", command))


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` names (relative imports resolved against ``path``)."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every import anywhere in the file, function-local ones included: ``import
    a.b`` gives (line, "a.b", None); ``from a import b`` gives (line, "a", "b") and, when ``a.b`` is a module
    of the project, also (line, "a.b", None)."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            for alias in node.names:
                found.append((node.lineno, module, alias.name))
                if is_module(f"{module}.{alias.name}"):
                    found.append((node.lineno, f"{module}.{alias.name}", None))
    return found


def module_aliases(path: Path) -> dict[str, str]:
    """Local names bound to a project module by an import (``import a.b as m``, ``from a import b``)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and is_module(alias.name):
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            for alias in node.names:
                if is_module(f"{module}.{alias.name}"):
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
    return bound


def test_mlproject_names_existing_command_line_modules():
    modules = command_line_modules()
    assert {"train.pipeline", "evaluation.monitor", "features.exchange", "models.lifecycle"} <= modules
    assert all(is_module(m) for m in modules), sorted(m for m in modules if not is_module(m))


def test_no_function_is_longer_than_80_lines():
    offenders = []
    for path in python_files(*LIBRARY_PACKAGES):
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{rel(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not offenders, (
        f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines; split them into named steps:\n"
        + "\n".join(offenders)
    )


def test_the_pipeline_module_stays_an_orchestration():
    path = ROOT / "train" / "pipeline.py"
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_PIPELINE_LINES, (
        f"train/pipeline.py has {n_lines} lines (at most {MAX_PIPELINE_LINES}): "
        "move its steps into library modules"
    )


def test_no_library_module_imports_another_packages_command_line_module():
    commands = command_line_modules()
    offenders = []
    for path in python_files(*IMPORT_CHECKED):
        package = module_name(path).split(".")[0]
        for line, module, name in imports(path):
            if name is None and module in commands and module.split(".")[0] != package:
                offenders.append(f"{rel(path)}:{line} imports {module}")
    assert not offenders, (
        "library code imports another package's command-line module (move what it needs into a library "
        f"module; command-line modules: {', '.join(sorted(commands))}):\n" + "\n".join(sorted(set(offenders)))
    )


def test_nothing_but_the_tests_imports_an_entry_points_main_or_parser():
    offenders = []
    for path in project_files():
        own = module_name(path)
        aliases = module_aliases(path)
        for line, module, name in imports(path):
            if name in COMMAND_LINE_ONLY and module not in (own, SHARED_CLI_HELPER) and is_module(module):
                offenders.append(f"{rel(path)}:{line} imports {name} from {module}")
        for node in ast.walk(tree(path)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in COMMAND_LINE_ONLY
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id, SHARED_CLI_HELPER) not in (own, SHARED_CLI_HELPER)
            ):
                target = aliases[node.value.id]
                offenders.append(f"{rel(path)}:{node.lineno} uses {target}.{node.attr}")
    assert not offenders, (
        f"only the tests may call an entry point's {', '.join(COMMAND_LINE_ONLY)} (share a library "
        "function instead):\n" + "\n".join(sorted(set(offenders)))
    )
