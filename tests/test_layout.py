"""The package's layout: imports point one way (down the layers below), no cycle, and no module imports the
project's own modules inside a function (function-local imports are for optional or slow third-party packages)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "warp_lightning"
# lower layers never import higher ones; a layer's modules may import each other (without a cycle)
LAYERS = {"utils": 0, "runtime": 0, "__init__": 0, "algo": 1, "data": 1, "policy": 2, "reward": 3, "builds": 4, "eval": 5,
          "train": 6, "studies": 7, "cli": 8,
          "__main__": 9}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0


def project_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported warp_lightning module, imported inside a function?) for each import in `path`."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("warp_lightning"):
            for alias in node.names:  # `from warp_lightning.algo import rl` imports the module algo.rl
                sub = f"{node.module}.{alias.name}"
                target = sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module
                found.append((target, id(node) in local))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in local) for a in node.names if a.name.startswith("warp_lightning")]
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m, _ in project_imports(p)} - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    assert all(layer(m) is not None for m in graph())


def test_imports_point_down_the_layers():
    upward = [(m, t) for m, targets in graph().items() for t in targets
              if layer(t) > layer(m) and t != "warp_lightning"]
    assert not upward, upward


def test_no_import_cycle():
    edges, state, stack = graph(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node)


def test_the_project_is_not_imported_inside_functions():
    local = [(module_name(p), m) for p in PACKAGE.rglob("*.py") for m, inside in project_imports(p) if inside]
    assert not local, local
