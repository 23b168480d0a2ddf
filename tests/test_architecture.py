"""The package's shape, read from its source with `ast`: import directions, who prints, module sizes.

The rules are DESIGN.md's: the flow runs config -> preflight -> pipeline -> stages -> measure -> runlog ->
report, and support layers never reach back up into what uses them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "greendistil"

# (importing package, imported prefix): never allowed.
FORBIDDEN = [
    ("greendistil.report", "greendistil.measure"),
    ("greendistil.report", "greendistil.stages"),
    ("greendistil.report", "greendistil.train"),
    ("greendistil.report", "greendistil.models"),
    ("greendistil.report", "greendistil.pipeline"),
    ("greendistil.measure", "greendistil.stages"),
    ("greendistil.measure", "greendistil.train"),
    ("greendistil.measure", "greendistil.models"),
    ("greendistil.measure", "greendistil.pipeline"),
    ("greendistil.train", "greendistil.measure.window"),
    ("greendistil.train", "greendistil.stages"),
    ("greendistil.runlog", "greendistil.measure"),
    ("greendistil.runlog", "greendistil.stages"),
    ("greendistil.runlog", "greendistil.train"),
    ("greendistil.runtime", "greendistil"),  # the shared mechanisms depend on nothing else of greendistil's
    ("greendistil.data", "greendistil.measure"),
    ("greendistil.data", "greendistil.stages"),
    ("greendistil.data", "greendistil.models"),
    ("greendistil.integrations", "greendistil.stages"),  # a Trainer's loop is the user's: no greendistil stage
    ("greendistil.integrations", "greendistil.pipeline"),
    ("greendistil.integrations", "greendistil.train"),
]
MAX_MODULE_LINES = 400
# planning.py, sweeping.py: the `plan` and `sweep` paths beside pipeline.py's `run` path
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "errors.py", "distributed.py", "preflight.py", "pipeline.py",
                "planning.py", "sweeping.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every greendistil module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name == "greendistil" or name.startswith("greendistil.")}


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(modules: dict[str, set[str]]) -> list[str]:
    """`<importer> imports <name>` for every import a rule forbids (a package never forbids itself)."""
    broken = []
    for importer, imported in sorted(modules.items()):
        for source, target in FORBIDDEN:
            if within(importer, source):
                broken += [f"{importer} imports {name}" for name in sorted(imported)
                           if within(name, target) and not within(name, source)]
    return sorted(set(broken))


def test_imports_run_one_way() -> None:
    modules = {module_name(path): imports_of(path) for path in all_modules()}
    assert violations(modules) == []


def test_the_rule_checker_catches_a_wrong_import() -> None:
    """The checker itself: a report module importing the meters, or train/ the window, is caught."""
    fake = {"greendistil.report.tables": {"greendistil.measure.carbon"},
            "greendistil.train.loop": {"greendistil.measure.window", "greendistil.measure.flops"},
            "greendistil.runtime.rng": {"greendistil.config"}}
    assert violations(fake) == ["greendistil.report.tables imports greendistil.measure.carbon",
                                "greendistil.runtime.rng imports greendistil.config",
                                "greendistil.train.loop imports greendistil.measure.window"]


def prints_in(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


def test_only_the_cli_prints() -> None:
    printing = {str(p.relative_to(PACKAGE)): prints_in(p) for p in all_modules() if p.name != "cli.py"}
    assert {name: lines for name, lines in printing.items() if lines} == {}


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    num_lines = len(path.read_text(encoding="utf-8").splitlines())
    assert num_lines <= MAX_MODULE_LINES, f"{path.name}: {num_lines} lines; split it by job"


def test_the_package_root_reads_in_flow_order() -> None:
    root = {p.name for p in PACKAGE.glob("*.py")}
    assert root == ROOT_MODULES
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == {"config", "data", "models", "train", "stages", "measure", "runlog", "report", "runtime",
                       "testing", "integrations"}
    assert not list(PACKAGE.rglob("utils.py"))
