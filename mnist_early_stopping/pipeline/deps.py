"""The project files a module runs: its import closure within the project, computed from the code.

`dvc.yaml` lists each stage's closure as its code deps (a test checks they
are equal), and the train stage's checkpoint manifest hashes the same files,
so neither is a list kept by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT_PACKAGES = ("stages", "mnist_early_stopping")
ROOT = Path(__file__).resolve().parents[2]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module (or package), or None if `name` is not one."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(source: str) -> set[str]:
    """Every module an import statement in `source` may load at run time, including imports inside functions.

    Imports under `if TYPE_CHECKING:` are left out: they never run.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from package import module` loads the module too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_closure(module: str, root: Path = ROOT) -> list[str]:
    """Project files (paths relative to `root`, sorted) that running `module` executes."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path is None or path in seen:
                continue
            seen.add(path)
            pending.extend(imported_modules(path.read_text(encoding="utf-8")))
    return sorted(p.relative_to(root).as_posix() for p in seen)
