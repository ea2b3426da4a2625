"""The decay rule modules form the bottom of the import graph (no cycle through distributed)."""

import ast
from pathlib import Path

import adamhd.decay

RULE_MODULES = ("chunks", "threshold", "rules", "strength", "options", "__init__")


def adamhd_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adamhd"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("adamhd"))
    return names


def test_rule_modules_import_only_each_other():
    folder = Path(adamhd.decay.__file__).parent
    for name in RULE_MODULES:
        allowed = {f"adamhd.decay.{m}" for m in RULE_MODULES if m not in (name, "__init__")}
        assert adamhd_imports(folder / f"{name}.py") <= allowed, name
    assert adamhd_imports(folder / "chunks.py") == set()  # the execution detail at the bottom
    assert adamhd_imports(folder / "threshold.py") == {"adamhd.decay.chunks"}


def test_distributed_builds_on_threshold_only():
    path = Path(adamhd.decay.__file__).parent.parent / "distributed.py"
    assert adamhd_imports(path) == {"adamhd.decay.threshold"}
