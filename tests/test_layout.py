"""The house rules, read from the code: no import circle, arrows one way between rooms, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("geo_service", "loaders", "collector")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Return the project modules a module imports, anywhere in it (a lazy import is an edge too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{a.name}" for a in node.names}
            found |= names & known or ({node.module} & known)
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) - {name} for name, path in modules().items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_and_passes_a_line() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_itself_round_a_circle() -> None:
    assert cycles(graph()) == []


# Which rooms each room may import (prefixes of module names); every other project import is refused.
ARROWS = {
    "geo_service.dsn": (),
    "geo_service.config": (),
    "geo_service.web": ("geo_service.web", "geo_service.snapshot.grid"),
    "geo_service.snapshot": ("geo_service.snapshot",),
    "geo_service.nearby": ("geo_service.nearby", "geo_service.snapshot"),
    "geo_service.ledger": ("geo_service.ledger", "geo_service.dsn", "geo_service.snapshot.grid"),
    "loaders": ("loaders", "geo_service.snapshot", "geo_service.nearby", "geo_service.dsn"),
    "collector": ("collector", "geo_service.web", "geo_service.snapshot", "geo_service.ledger", "geo_service.dsn",
                  "geo_service.config", "geo_service.nearby.task_status", "loaders.errors",
                  "loaders.sources"),
}


def _room(name: str) -> str | None:
    return max((room for room in ARROWS if name == room or name.startswith(room + ".")), key=len, default=None)


def _allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return target == "geo_service" or any(target == p or target.startswith(p + ".") for p in prefixes)


def test_arrows_run_one_way_between_rooms() -> None:
    wrong = [f"{source} imports {target}" for source, targets in sorted(graph().items())
             if (room := _room(source)) is not None for target in sorted(targets) if not _allowed(target, ARROWS[room])]
    assert wrong == []


def test_a_wrong_arrow_is_caught() -> None:
    assert not _allowed("geo_service.handlers", ARROWS["geo_service.web"])
    assert not _allowed("geo_service.ledger", ARROWS["geo_service.snapshot"])
    assert _allowed("geo_service.snapshot.grid", ARROWS["geo_service.ledger"])


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_fit_on_a_few_screens(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by what it holds"
