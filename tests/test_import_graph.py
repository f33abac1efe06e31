"""The import graph of flows/ and models/: no cycles, and models/ independent of flows/.

The graph is read from the source with `ast`, nothing is imported. Its nodes are the modules
of flows/ and models/ under their installed names (flows/x/y.py is `collectflow.flows.x.y`,
an `__init__.py` is its package). An edge is an import of one of them, at module level or
inside a function:
- `import collectflow.flows.x.y` is an edge to `collectflow.flows.x.y`;
- `from collectflow.flows.x import name` is an edge to the submodule `collectflow.flows.x.name`
  when there is one, else to `collectflow.flows.x` (its `__init__`);
- a package whose `__init__` imports its own submodules has those edges like any module.
Imports under `if TYPE_CHECKING:` are ignored: they never run. The parent packages a dotted
import runs on the way are not edges either: Python finds them half-initialised in
`sys.modules` and goes on, so only the modules named in the source count.

A cycle is reported as every strongly connected component of more than one module (or one
that imports itself), each shown as a few cycles `a -> b -> a` that together use every edge of
the component, with the file:line of each import, so the edge to cut can be chosen.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"flows": "collectflow.flows", "models": "collectflow.models"}
MODELS_MAY_IMPORT_FLOWS = {"collectflow.models.migrations.env"}  # Alembic reads the settings


@dataclass(frozen=True)
class Import:
    """One import statement's edge: where it is, what it names, what it resolves to."""

    source: str
    target: str
    named: str  # the dotted name as written (after resolving relative imports)
    path: str
    line: int
    in_function: bool

    def where(self) -> str:
        level = "function-level" if self.in_function else "module-level"
        return f"{self.path}:{self.line} ({level})"


def module_files(root: Path, packages: dict[str, str]) -> dict[str, Path]:
    """Every module of the given folders, by installed name."""
    modules = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    body: list[ast.stmt], in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements anywhere in the body, skipping `if TYPE_CHECKING:` branches."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse, in_function)
        else:
            nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    statements = [c for c in children if isinstance(c, ast.stmt)]
                    statements += [
                        s for c in children if not isinstance(c, ast.stmt) for s in c.body
                    ]
                    yield from _import_nodes(statements, nested)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that a dotted name names (or lies inside), if any."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _from_base(node: ast.ImportFrom, module: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, root: Path, modules: dict[str, Path]) -> list[Import]:
    """The edges from one module to others of ours."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    relative = path.relative_to(root).as_posix()
    found = []
    for node, in_function in _import_nodes(tree.body):
        if isinstance(node, ast.Import):
            named = [alias.name for alias in node.names]
        else:
            base = _from_base(node, module, path)
            named = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for name in dict.fromkeys(named):
            target = _known(name, modules)
            if target is not None:
                found.append(Import(module, target, name, relative, node.lineno, in_function))
    return found


def import_graph(root: Path, packages: dict[str, str]) -> dict[tuple[str, str], list[Import]]:
    """Every edge between our modules, with each import statement that makes it."""
    modules = module_files(root, packages)
    edges: dict[tuple[str, str], list[Import]] = {}
    for module, path in modules.items():
        for found in imports_of(module, path, root, modules):
            edges.setdefault((found.source, found.target), []).append(found)
    return edges


def strongly_connected(nodes: list[str], successors: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(successors.get(start, [])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(successors.get(child, []))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _shortest_path(start: str, goal: str, successors: dict[str, list[str]]) -> list[str]:
    previous = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for child in successors.get(node, []):
            if child not in previous:
                previous[child] = node
                queue.append(child)
    path = [goal]
    while path[-1] != start:
        path.append(previous[path[-1]])
    return path[::-1]


def covering_cycles(component: list[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Cycles through the component, each closing one of its edges by the shortest way back,
    so together they use every edge; each rotated to start at its smallest module."""
    inside = {
        node: sorted(b for a, b in edges if a == node and b in component) for node in component
    }
    cycles: dict[tuple[str, ...], None] = {}
    for source in component:
        for target in inside[source]:
            ring = [source, *_shortest_path(target, source, inside)[:-1]]
            first = ring.index(min(ring))
            cycles[tuple(ring[first:] + ring[:first])] = None
    return [list(cycle) for cycle in sorted(cycles, key=lambda c: (len(c), c))]


def describe_cycles(edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    """One paragraph per cycle found, naming each edge's import statements."""
    nodes = sorted({node for edge in edges for node in edge})
    successors = {node: sorted(b for a, b in edges if a == node) for node in nodes}
    paragraphs = []
    for component in strongly_connected(nodes, successors):
        if len(component) == 1 and (component[0], component[0]) not in edges:
            continue
        for cycle in covering_cycles(component, set(edges)):
            ring = [*cycle, cycle[0]]
            lines = [" -> ".join(ring)]
            for source, target in pairwise(ring):
                where = ", ".join(found.where() for found in edges[(source, target)])
                lines.append(f"    {source} -> {target}: {where}")
            paragraphs.append("\n".join(lines))
    return paragraphs


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    """Overrides the session's Prefect server (conftest.py): these tests run no flow."""
    yield


def test_no_import_cycles() -> None:
    cycles = describe_cycles(import_graph(ROOT, PACKAGES))
    assert not cycles, (
        f"{len(cycles)} import cycle(s) among flows/ and models/; each must lose one of its "
        "edges (one cut may break several):\n\n" + "\n\n".join(cycles)
    )


def test_models_import_nothing_from_flows() -> None:
    modules = module_files(ROOT, PACKAGES)
    offending = [
        f"{found.where()}: {found.source} imports {found.named}"
        for module, path in modules.items()
        if module.startswith("collectflow.models") and module not in MODELS_MAY_IMPORT_FLOWS
        for found in imports_of(module, path, ROOT, modules)
        if found.target.startswith("collectflow.flows")
    ]
    assert not offending, "models/ must not import flows/:\n" + "\n".join(offending)


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages a regular (non-editable) install ships: a new
    subpackage missing there imports in a checkout and fails once installed."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {
        name for name, path in module_files(ROOT, PACKAGES).items() if path.name == "__init__.py"
    }
    missing = sorted(packages - listed)
    assert not missing, f"pyproject.toml, [tool.setuptools] packages: add {', '.join(missing)}"


def test_the_graph_reader_sees_what_python_would_run(tmp_path: Path) -> None:
    """A made-up package: the reader finds the cycle through a function-level import and a
    `from package import submodule`, and ignores what only a type checker reads."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.sub import b\n")
    (package / "a.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import pkg.c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a, c\n")
    (package / "c.py").write_text("from . import a\nfrom .sub.b import f\n")

    edges = import_graph(tmp_path, {"pkg": "pkg"})

    assert sorted(edges) == [
        ("pkg", "pkg.sub.b"),
        ("pkg.c", "pkg.a"),
        ("pkg.c", "pkg.sub.b"),
        ("pkg.sub.b", "pkg.a"),
        ("pkg.sub.b", "pkg.c"),
    ]
    assert edges[("pkg.sub.b", "pkg.c")][0].where() == "pkg/sub/b.py:2 (function-level)"
    assert describe_cycles(edges) == [
        "pkg.c -> pkg.sub.b -> pkg.c\n"
        "    pkg.c -> pkg.sub.b: pkg/c.py:2 (module-level)\n"
        "    pkg.sub.b -> pkg.c: pkg/sub/b.py:2 (function-level)"
    ]
