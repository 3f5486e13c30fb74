"""No import cycles among the project's modules (tasks/, apps/, config/).

A cycle hidden behind an import inside a function still ties the modules into one: neither
can be read, tested or changed alone, and the order the process happens to import them in
decides whether it starts. So every import statement counts, wherever it sits (module
level, function body, `try`), read from the source with `ast` (nothing is imported).

What one import statement is an edge to:
- `import a.b.c`: the deepest of a.b.c, a.b, a that is one of our modules;
- `from a.b import c`: `a.b.c` if that is a module (a submodule imported by name), else
  `a.b` (a name defined in a.b's __init__ or module body);
- relative imports resolve against the importing module's package (a package's __init__
  is its own package), so a package's `from . import sub` is an edge to `pkg.sub`, and a
  submodule's `from .sibling import x` is an edge to the sibling, not to the package: only
  a submodule that takes a name from the package itself (`from . import name_in_init`,
  `from pkg import name`) depends on the package's __init__.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("apps", "config", "tasks")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _deepest_known(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of `module` naming one of ours."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _deepest_known(alias.name, modules)
                if target:
                    edges.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                target = submodule if submodule in modules else _deepest_known(source, modules)
                if target:
                    edges.append((target, node.lineno))
    return [(target, line) for target, line in edges if target != module]


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def _shortest_cycle(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    members = set(group)
    start = group[0]
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {group}")  # not a cycle group


def _describe(graph: dict[str, dict[str, int]], cycle: list[str], modules: dict[str, Path]) -> str:
    def shown(path: Path) -> Path:
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    steps = [
        f"  {a} -> {b}  ({shown(modules[a])}:{graph[a][b]})" for a, b in itertools.pairwise(cycle)
    ]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def _graph_of(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of its first import of it}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        targets: dict[str, int] = {}
        for target, line in _imports(module, path, modules):
            targets.setdefault(target, line)
        graph[module] = targets
    return graph


def find_cycles(modules: dict[str, Path]) -> list[str]:
    """One shortest cycle, described import by import, per group of modules that import
    each other."""
    graph = _graph_of(modules)
    found = []
    for group in _strongly_connected(graph):
        cycle = _shortest_cycle(graph, group)
        described = _describe(graph, cycle, modules)
        if len(group) > len(cycle) - 1:
            described += "\n  (one loop of the group " + ", ".join(group) + ")"
        found.append(described)
    return found


def test_no_import_cycles() -> None:
    cycles = find_cycles(_modules())
    assert not cycles, "import cycles (every import counts, even inside a function):\n" + (
        "\n".join(cycles)
    )


def test_the_walk_sees_lazy_imports_and_follows_the_package_rules(tmp_path: Path) -> None:
    """The rules of the module docstring on a small tree: a package importing its own
    submodules is no cycle; one import inside a function closing a loop is, and is named;
    a submodule taking a name from its package's __init__ is an edge to the package."""
    modules = {
        "p": tmp_path / "p" / "__init__.py",
        "p.a": tmp_path / "p" / "a.py",
        "p.b": tmp_path / "p" / "b.py",
        "q": tmp_path / "q.py",
    }
    (tmp_path / "p").mkdir()
    modules["p"].write_text("from . import a\nfrom .b import thing\n")
    modules["p.a"].write_text("from .b import thing\n")
    modules["p.b"].write_text("from . import a\nfrom p import a as again\nthing = 1\n")
    modules["q"].write_text("def later():\n    from p.a import thing\n")
    assert _graph_of(modules)["p.b"] == {"p.a": 1}  # submodules by name: not the package
    assert find_cycles(modules) == [
        "p.a -> p.b -> p.a\n"
        + (f"  p.a -> p.b  ({modules['p.a']}:1)\n  p.b -> p.a  ({modules['p.b']}:1)")
    ]
    modules["p.b"].write_text("thing = 1\n")
    assert find_cycles(modules) == []

    modules["p.a"].write_text("from .b import thing\n\n\ndef f():\n    import q\n")
    assert _strongly_connected(_graph_of(modules)) == [["p.a", "q"]]
    assert find_cycles(modules)[0].startswith("p.a -> q -> p.a\n")
    assert f"p.a -> q  ({modules['p.a']}:5)" in find_cycles(modules)[0]

    modules["p.a"].write_text("from .b import thing\n")
    modules["p.b"].write_text("from . import helper\nthing = 1\n")  # a name of p's __init__
    assert _graph_of(modules)["p.b"] == {"p": 1}
    assert _strongly_connected(_graph_of(modules)) == [["p", "p.a", "p.b"]]  # p -> p.a -> p.b -> p
