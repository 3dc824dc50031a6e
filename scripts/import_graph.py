"""The import graph of a Python package: modules, arrows, floors, circles, arrows back up.

    python scripts/import_graph.py services/api/src/llm_stream_api [--rooms a,b,c] [--json]
    python scripts/import_graph.py bench          # a folder of scripts: circles between them

A module's floor is 1 when it imports nothing of the package, else one more than the highest
floor it imports. ``--rooms`` names the package's rooms from the bottom up (a sub-package, or a
top-level module, by its first name under the package); an arrow from a room to one named
later is an arrow back up. Imports inside functions count: they are arrows all the same.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def modules_of(root: Path) -> dict[str, Path]:
    """A package's modules by dotted name; for a folder of scripts (no ``__init__.py``, such as
    ``bench/``, whose scripts import each other by bare name), its top-level files by name."""
    if not (root / "__init__.py").exists():
        return {path.stem: path for path in sorted(root.glob("*.py"))}
    package = root.name
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    assert package in found, f"{root} is not a package (no __init__.py)"
    return found


def arrows_of(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"  # a script folder's modules are all top-level
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` is an arrow to pkg.mod; `from pkg.mod import x` to pkg.mod.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floors_of(graph: dict[str, set[str]]) -> dict[str, int]:
    floors: dict[str, int] = {}

    def floor(node: str, trail: frozenset[str]) -> int:
        if node in floors:
            return floors[node]
        below = [floor(t, trail | {node}) for t in graph[node] if t not in trail]
        floors[node] = 1 + max(below, default=0)
        return floors[node]

    for node in sorted(graph):
        floor(node, frozenset())
    return floors


def room_of(module: str, package: str) -> str:
    rest = module[len(package) + 1 :]
    return rest.split(".")[0] if rest else "__init__"


def report(root: Path, rooms: list[str]) -> dict[str, object]:
    modules = modules_of(root)
    graph = arrows_of(modules)
    package = root.name
    # The package's __init__ and __main__ are the door: they may import anything.
    doors = {package, f"{package}.__main__"} if package in modules else set()
    floors = floors_of(graph)
    rank = {room: i for i, room in enumerate(rooms)}
    back_up = []
    for source, targets in graph.items():
        if source in doors:
            continue
        for target in targets:
            a, b = room_of(source, package), room_of(target, package)
            if a in rank and b in rank and rank[b] > rank[a]:
                back_up.append(f"{source} -> {target}")
    unplaced = sorted({room_of(m, package) for m in modules if m not in doors} - set(rank)) if rooms else []
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in modules.items()), reverse=True)
    return {
        "modules": len(modules),
        "arrows": sum(len(t) for t in graph.values()),
        "floors": max(floors.values()),
        "circles": circles_of(graph),
        "back_up": sorted(back_up),
        "unplaced_rooms": unplaced,
        "largest": [f"{m} ({n} lines)" for n, m in sizes[:5]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--rooms", default="", help="rooms from the bottom up, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rooms = [r for r in args.rooms.split(",") if r]
    result = report(args.package.resolve(), rooms)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
