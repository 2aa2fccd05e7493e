"""The package's shape: module and function sizes, and which layer imports which.

``common`` imports neither side; ``client`` and ``server`` never import each other;
the auditor's tools (``audit``, and the ``common`` modules they use) import no torch,
Flower or Opacus, so that an auditor's install needs none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slidefed"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
HEAVY = ("torch", "opacus", "flwr", "ray", "tiffslide", "timm", "transformers")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(
            node, ast.If
        ):  # TYPE_CHECKING blocks import nothing at run time
            continue
    return found


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_is_too_long() -> None:
    long = {
        _name(p): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_too_long() -> None:
    long: dict[str, int] = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{_name(path)}.{node.name}:{node.lineno}"] = size
    assert long == {}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "slidefed.common",
            (
                "slidefed.client",
                "slidefed.server",
                "slidefed.deploy",
                "slidefed.audit",
                "slidefed.demo",
                "slidefed.bench",
                "slidefed.cli",
            ),
        ),
        ("slidefed.client", ("slidefed.server", "slidefed.deploy", "slidefed.cli")),
        ("slidefed.server", ("slidefed.client", "slidefed.deploy", "slidefed.cli")),
        ("slidefed.audit", ("slidefed.client", "slidefed.server", *HEAVY)),
    ],
)
def test_layers_import_only_below(package: str, forbidden: tuple[str, ...]) -> None:
    offending = sorted(
        f"{_name(p)} imports {imported}"
        for p in _modules()
        if _under(_name(p), package)
        for imported in _imports(p)
        if any(_under(imported, f) for f in forbidden)
    )
    assert offending == []


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports inside the package form no cycle."""
    names = {_name(p): p for p in _modules()}
    graph = {
        name: {m for m in _top_level_imports(path) if m in names and m != name}
        for name, path in names.items()
    }
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ that re-exports its own submodules is not a cycle.
    real = [
        c
        for c in cycles
        if not all(_under(part, c.split(" -> ")[0]) for part in c.split(" -> "))
    ]
    assert real == []
