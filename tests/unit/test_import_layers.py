"""The layering holds: no import cycles in harness/, and no import runs back up.

Read from the source with `ast` (every import statement, also those inside
functions), so a lazy import that would close a loop is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import harness

Graph = dict[str, set[str]]

#: (importer prefix, imported prefixes it must not reach, exceptions).
#: Prefixes match a module or its submodules.
RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("harness.qemu", ("harness.guest", "harness.topology", "harness.views", "harness.workloads",
                      "harness.factory", "harness.snapshot", "harness.scenarios", "harness.cli",
                      "harness.pytestplugin"), ()),
    ("harness.topology", ("harness.guest", "harness.workloads", "harness.factory",
                          "harness.snapshot", "harness.scenarios", "harness.cli",
                          "harness.pytestplugin"), ()),
    # views/ is pure data: it parses what a running guest gave, it never holds one.
    ("harness.views", ("harness.guest.running", "harness.workloads", "harness.scenarios",
                       "harness.cli", "harness.pytestplugin", "harness.factory"), ()),
    ("harness.workloads", ("harness.scenarios", "harness.cli", "harness.pytestplugin"), ()),
    ("harness.scenarios", ("harness.cli", "harness.pytestplugin"), ()),
    ("harness.", ("harness.cli",), ("harness.cli", "harness.__main__")),
)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def import_graph(package_dir: Path) -> Graph:
    """{module: modules of the package it imports}."""
    modules: dict[str, Path] = {}
    for path in package_dir.rglob("*.py"):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [s for s in subs if s in modules]
                if len(targets) < len(subs):  # names from the module itself
                    targets.append(node.module)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(graph: Graph) -> list[str]:
    bad = []
    for importer, imported in sorted(graph.items()):
        for prefix, forbidden, allowed in RULES:
            if not _under(importer, prefix) or any(_under(importer, a) for a in allowed):
                continue
            bad += [f"{importer} imports {target}" for target in sorted(imported)
                    if any(_under(target, f) for f in forbidden)]
    return bad


def test_harness_has_no_import_cycle() -> None:
    graph = import_graph(Path(harness.__file__).parent)
    assert len(graph) > 50, sorted(graph)  # the walk found the package
    assert cycles(graph) == []


def test_no_import_runs_back_up() -> None:
    assert layer_violations(import_graph(Path(harness.__file__).parent)) == []


def test_checks_see_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "harness"
    (package / "qemu").mkdir(parents=True)
    (package / "guest").mkdir()
    (package / "__init__.py").write_text("")
    (package / "qemu" / "__init__.py").write_text("")
    (package / "guest" / "__init__.py").write_text("")
    (package / "qemu" / "accel.py").write_text(
        "def f():\n    from harness.guest.image import GuestImage\n")
    (package / "guest" / "image.py").write_text("import harness.qemu.accel\n")
    graph = import_graph(package)
    assert graph["harness.qemu.accel"] == {"harness.guest.image"}
    assert cycles(graph) == [["harness.guest.image", "harness.qemu.accel"]]
    assert layer_violations(graph) == ["harness.qemu.accel imports harness.guest.image"]
