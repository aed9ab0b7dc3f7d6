"""The package's shape: imports point one way, without cycles or private names across modules."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import tlc
from tlc.convert.call_sites import hooks

ROOT = Path(tlc.__file__).parent
#: Lower layers first; a module may import only from its own layer or lower ones.
LAYERS = ("ops", "nn", "convert")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("tlc", *path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(module imported, name imported) for the runtime imports of one module (``TYPE_CHECKING``
    blocks skipped: they never run)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
                target = ".".join(p for p in (base, node.module or "") if p)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.append((full if full in modules else target, alias.name))
            elif isinstance(node, ast.Import):
                found.extend((alias.name, "") for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(ast.parse(path.read_text()).body)
    return [(target, imported) for target, imported in found if target == "tlc" or target.startswith("tlc.")]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # A package's __init__ always runs before its modules: an edge to a parent is no cycle.
    return {
        name: {t for t, _ in _imports(name, path, modules) if t in modules and not name.startswith(t + ".")}
        for name, path in modules.items()
    }


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_names_imported_across_modules():
    modules = _modules()
    private = [
        (name, target, imported)
        for name, path in modules.items()
        for target, imported in _imports(name, path, modules)
        if imported.startswith("_") and imported != "__version__"
    ]
    assert private == []


def test_core_layers_import_only_downwards():
    def layer(module: str) -> int | None:
        return next((i for i, lay in enumerate(LAYERS) if module == f"tlc.{lay}" or module.startswith(f"tlc.{lay}.")), None)

    upward = []
    for name, targets in _graph().items():
        own = layer(name)
        if own is None:
            continue
        for target in targets:
            other = layer(target)
            allowed = target == "tlc._util" or (other is not None and other <= own)
            if not allowed:
                upward.append((name, target))
    assert upward == []


def test_files_whose_torch_calls_are_never_call_sites_exist():
    # A moved file missing from this list would make tlc's own local ops show up as call sites.
    for prefix in hooks.INTERNAL:
        assert os.path.exists(prefix), prefix
    assert {os.path.basename(p.rstrip(os.sep)) for p in hooks.INTERNAL} == {
        "ops", "nn", "pooled_gate.py", "pooled_values.py", "pooled_forms.py", "channel_first.py", "attention.py"
    }
