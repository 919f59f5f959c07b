"""The house rules, read from the code: no import circle, arrows one way between rooms, small modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("geo_service", "loaders", "collector", "delivery", "placement")
MAX_LINES = 400


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages under `root`, by dotted name."""
    return {_module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def _with_parents(name: str) -> set[str]:
    """A module and the packages Python imports before it (a.b.c: a, a.b, a.b.c)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _import_nodes(tree: ast.Module, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module: those run when it is imported (outside functions), or all of them."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif lazy or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str], lazy: bool) -> set[str]:
    """Return the project modules importing module `name` loads, each with its parent packages (but not the
    packages `name` itself lies in: Python has loaded those before it); with `lazy`, the imports inside
    functions too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text()), lazy):
        if isinstance(node, ast.Import):
            targets = {a.name for a in node.names}
        else:
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        found |= {m for target in targets for m in _with_parents(target)} & known
    return found - _with_parents(name)


def graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES, lazy: bool = False) -> dict[str, set[str]]:
    found = modules(root, packages)
    return {name: imports_of(name, path, set(found), lazy) for name, path in found.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
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


# Which rooms each room may import (prefixes of module names, longest room first); the package heads every
# module loads on its way (geo_service, geo_service.snapshot, ...) are always allowed.
ARROWS: dict[str, tuple[str, ...]] = {
    "geo_service": ("geo_service",),  # the service itself: anything of its own package
    "geo_service.dsn": (),
    "geo_service.config": (),
    "geo_service.web": ("geo_service.web", "geo_service.snapshot.grid"),
    "geo_service.snapshot": ("geo_service.snapshot", "geo_service.dsn"),  # dsn: a leaf, URLs with credentials
    "geo_service.nearby": ("geo_service.nearby", "geo_service.snapshot"),
    "geo_service.ledger": ("geo_service.ledger", "geo_service.dsn", "geo_service.snapshot.grid"),
    "loaders": ("loaders", "geo_service.snapshot", "geo_service.nearby", "geo_service.dsn", "delivery.channels"),
    "collector": ("collector", "geo_service.web", "geo_service.snapshot", "geo_service.ledger", "geo_service.dsn",
                  "geo_service.config", "geo_service.nearby", "loaders.errors", "loaders.sources", "delivery.channels"),
    "delivery": ("delivery", "geo_service.ledger", "geo_service.web", "geo_service.dsn", "geo_service.config"),
    "delivery.channels": ("geo_service.config",),
    # The console edits the source the loaders read and builds with their code; it serves pages as the others do.
    "placement": ("placement", "loaders", "geo_service.web", "geo_service.snapshot", "geo_service.dsn", "geo_service.config",
                  "delivery.channels"),  # near a leaf: the build and the collector read channels files too
}


def wrong_arrows(edges: Mapping[str, set[str]], arrows: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Return 'source imports target' for every import its room does not allow."""
    def room(name: str) -> str | None:
        return max((r for r in arrows if name == r or name.startswith(r + ".")), key=len, default=None)

    def allowed(source: str, target: str, prefixes: tuple[str, ...]) -> bool:
        is_head_on_the_way = target in _with_parents(source) or any(target in _with_parents(p) for p in prefixes)
        return is_head_on_the_way or any(target == p or target.startswith(p + ".") for p in prefixes)

    return [f"{source} imports {target}" for source, targets in sorted(edges.items())
            if (r := room(source)) is not None for target in sorted(targets) if not allowed(source, target, arrows[r])]


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_circle_through_a_package_head_is_found_and_a_lazy_import_is_not_one(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "pk/__init__.py": "def open_b():\n    from pk import b\n    return b\n",  # lazy: not run at import
        "pk/a.py": "import pk.b\n",
        "pk/b.py": "from pk import c\n",
        "pk/c.py": "from . import a\n",  # relative: pk.a
        "pk/d.py": "from pk.a import thing\n",
        "qk/__init__.py": "", "qk/e.py": "from pk.a import thing\n",
    })
    edges = graph(root, ("pk",))
    assert edges["pk.d"] == {"pk.a"}  # its own package's head is loaded before it: no arrow
    assert graph(root, ("pk", "qk"))["qk.e"] == {"pk", "pk.a"}  # another package's head loads on the way
    assert cycles(edges) == [["pk.a", "pk.b", "pk.c"]]
    assert "pk.b" not in edges["pk"] and "pk.b" in graph(root, ("pk",), lazy=True)["pk"]


def test_a_wrong_arrow_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pk/__init__.py": "", "pk/low/__init__.py": "", "pk/low/x.py": "import pk.high\n",
                            "pk/high.py": "from pk.low import x\n"})
    edges = graph(root, ("pk",), lazy=True)
    assert wrong_arrows(edges, {"pk.low": ("pk.low",), "pk.high": ("pk.low",)}) == ["pk.low.x imports pk.high"]


def test_no_module_imports_itself_round_a_circle() -> None:
    assert cycles(graph()) == []


def test_arrows_run_one_way_between_rooms() -> None:
    assert wrong_arrows(graph(lazy=True), ARROWS) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_fit_on_a_few_screens(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by what it holds"
