"""Imports run one way: spec (with config, errors, fileio, patching) below the model, the model below the
runtimes, the runtimes below export, calibration, training and the tools. A runtime never needs the
exporters (a device install reads bundles and runs graphs only), and the graph spec needs nothing above it.
No module reaches itself through its imports (test_no_import_circles), deferred imports included."""

import ast
from pathlib import Path

import neat_edge

ROOT = Path(neat_edge.__file__).parent
# room -> rooms (top-level names under neat_edge) it must never import, at module level or inside functions
FORBIDDEN = {
    "spec.py": {"model", "export", "runtimes", "calibration", "training", "tools", "hf"},
    "bundle.py": {"model", "export", "runtimes", "calibration", "training", "tools", "hf"},
    "manifest.py": {"model", "export", "runtimes", "calibration", "training", "tools", "hf"},
    "tensorfile.py": {"model", "export", "runtimes", "calibration", "training", "tools", "hf"},
    "model": {"export", "runtimes", "calibration", "training", "tools", "hf"},
    "runtimes": {"export", "calibration", "training", "tools", "hf"},
}


def import_nodes(path: Path):
    """Every import statement of a file, anywhere in it, but those only for type checkers (under
    `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in typing_only]


def imported_rooms(path: Path) -> set[str]:
    """neat_edge rooms a file imports (imports only for type checkers aside)."""
    rooms = set()
    for node in import_nodes(path):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "neat_edge" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def test_imports_run_one_way():
    bad = []
    for room, forbidden in FORBIDDEN.items():
        files = [ROOT / room] if room.endswith(".py") else sorted((ROOT / room).rglob("*.py"))
        for f in files:
            for hit in sorted(imported_rooms(f) & forbidden):
                bad.append(f"{f.relative_to(ROOT)} imports neat_edge.{hit}")
    assert not bad, "\n".join(bad)


def test_core_never_imports_hugging_face():
    """transformers / optimum are the `hf` extra's: only neat_edge/hf imports them."""
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        if f.relative_to(ROOT).parts[0] == "hf":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{f.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in ("transformers", "optimum")]
    assert not bad, "\n".join(bad)


def module_name(path: Path) -> str:
    parts = ("neat_edge", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """neat_edge modules a file imports anywhere in it (inside functions too: a deferred import is still
    a dependency, and deferring one is no way out of a circle); `from pkg import name` counts as
    pkg.name when that is a module. Imports under `if TYPE_CHECKING:` aside."""
    found = set()
    for node in import_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & modules


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (or a module importing itself), each as
    one circle through it (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles():
    """No module of neat_edge/ reaches itself through its imports: each room stands on the ones below it."""
    files = {module_name(f): f for f in ROOT.rglob("*.py")}
    graph = {m: imported_modules(f, set(files)) for m, f in files.items()}
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_import_circles_are_found():
    """The walker itself: a circle of three, a self-import and a clean chain."""
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"a"}}) == [["a"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
