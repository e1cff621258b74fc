"""Imports run one way: spec (with config, errors, fileio, patching) below the model, the model below the
runtimes, the runtimes below export, calibration, training and the tools. A runtime never needs the
exporters (a device install reads bundles and runs graphs only), and the graph spec needs nothing above it."""

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


def imported_rooms(path: Path) -> set[str]:
    """neat_edge rooms a file imports (imports only for type checkers, under `if TYPE_CHECKING:`, aside)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    rooms = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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
