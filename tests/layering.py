"""Test helper: which top-level packages a module's source imports (for ARCHITECTURE §2 layering checks)."""
from __future__ import annotations

import ast
import inspect
from types import ModuleType


def top_level_imports(module: ModuleType) -> set[str]:
    """Top-level package names of every ``import`` / ``from ... import`` in ``module`` (``__future__`` excluded)."""
    mods: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            mods.add((node.module or "").split(".")[0])
    return mods
