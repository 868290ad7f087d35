"""The import graph between service packages, read from the source with ``ast`` (imports
inside functions included): archive, compare and replay form no cycle, and the archive,
which only records, imports neither compare nor replay."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
WATCHED = ("archive", "compare", "replay")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_edges() -> dict[str, set[str]]:
    """Service package -> the other service packages its modules import."""
    edges: dict[str, set[str]] = {}
    for package in sorted(p for p in SERVICES.iterdir() if (p / "__init__.py").is_file()):
        targets = edges.setdefault(package.name, set())
        for path in package.rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != package.name:
                    targets.add(parts[1])
    return edges


def cycles_among(edges: dict[str, set[str]], nodes: tuple[str, ...]) -> list[list[str]]:
    """Each cycle of the graph restricted to ``nodes``, as a path back to its start."""
    found: list[list[str]] = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(edges.get(path[-1], set()) & set(nodes)):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its least node
                walk([*path, nxt])

    for start in nodes:
        walk([start])
    return found


def test_the_finder_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from services.compare.run import compare\n")
    assert "services.compare.run" in imported_modules(source)
    assert cycles_among({"a": {"b"}, "b": {"a"}}, ("a", "b")) == [["a", "b", "a"]]


def test_archive_compare_and_replay_import_each_other_in_one_direction_only() -> None:
    edges = package_edges()
    assert set(WATCHED) <= set(edges)
    assert cycles_among(edges, WATCHED) == []
    assert not edges["archive"] & {"compare", "replay"}, edges["archive"]
