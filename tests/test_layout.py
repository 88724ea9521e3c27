"""The package's layers (issue #19 item 5): each part imports only parts below it, and no two
parts import each other, counting the imports made inside functions too.

Read from the source with :mod:`ast`: no module is imported, so this runs in a second.
"""

import ast
from pathlib import Path

import vector_assets

PACKAGE = Path(vector_assets.__file__).parent

#: Bottom first. A part may import parts of its own rank or below, never above.
LAYERS = [
    {"settings", "local"},  # configuration and this machine
    {"state"},  # the database every worker shares
    {"ingest"},  # landing data, records, extraction, passages
    {"embed"},  # the model and the vectors' quality rules
    {"store"},  # Milvus and the incremental sync
    {"instance", "keys", "partitions", "resources"},  # Dagster: the instance, keys, partitions, resources
    {"serving"},  # search, the HTTP service, its keys
    {"checks"},
    {"assets"},
    {"jobs", "sensors"},
    {"definitions", "storage"},
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(path: Path) -> str:
    """The layer part of a module file: its subpackage's name, or its own for a top-level module."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_parts(path: Path) -> set[str]:
    """The parts of the package that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bits = ("vector_assets",) + path.relative_to(PACKAGE).with_suffix("").parts
    package = ".".join(bits[:-1])  # a module's package; an __init__.py's own
    parts = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from .. import settings``: each name may be a part itself.
            names = [f"{target}.{a.name}" for a in node.names] if target == "vector_assets" else [target]
        for name in names:
            bits = name.split(".")
            if bits[0] == "vector_assets" and len(bits) > 1:
                parts.add(bits[1])
    parts.discard(part_of(path))
    return parts


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        edges.setdefault(part_of(path), set()).update(imported_parts(path))
    return edges


def test_every_part_has_a_layer():
    assert set(graph()) == set(RANK), "a new part of the package needs its place in LAYERS"


def test_parts_import_only_downward():
    upward = sorted(f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]})" for a, targets in graph().items() for b in targets if RANK[b] > RANK[a])
    assert upward == []


def test_no_import_cycle_between_parts():
    edges = graph()
    cycles = []

    def visit(node, path):
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    assert cycles == []
