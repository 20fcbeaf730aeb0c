"""The rooms of the house say what they hold (read from the source with `ast`).

- one definition per class (or Protocol, or type alias) name across harness/:
  a name found anywhere means one thing;
- no `Any` where a topology is meant;
- modules of at most 450 lines;
- scenarios/ holds capability packages; a top-level module there is shared by
  several capabilities (threeview, where), never one with a capability's prefix.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import harness

PACKAGE = Path(harness.__file__).parent
MAX_LINES = 450
SCENARIO_PACKAGES = {"hotplug", "migration", "intx", "bootstress", "explore"}


def modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def defined_names(root: Path) -> dict[str, list[str]]:
    """{class or module-level type alias name: ["module:line", ...]}"""
    found: dict[str, list[str]] = defaultdict(list)
    for path in modules(root):
        tree = ast.parse(path.read_text(), str(path))
        where = f"{path.relative_to(root.parent)}"
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found[node.name].append(f"{where}:{node.lineno}")
            elif (isinstance(node, ast.Assign) and len(node.targets) == 1
                  and isinstance(node.targets[0], ast.Name) and node.targets[0].id[:1].isupper()
                  and not node.targets[0].id.isupper()
                  and isinstance(node.value, (ast.Subscript, ast.Attribute, ast.Name))):
                found[node.targets[0].id].append(f"{where}:{node.lineno}")
    return found


def twice(root: Path) -> dict[str, list[str]]:
    return {name: where for name, where in defined_names(root).items() if len(where) > 1}


def topology_any(root: Path) -> list[str]:
    bad = []
    for path in modules(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.arg) and "topolog" in node.arg and node.annotation is not None \
                    and ast.unparse(node.annotation) == "Any":
                bad.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.arg}: Any")
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and "topolog" in node.target.id and ast.unparse(node.annotation) == "Any":
                bad.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.target.id}: Any")
    return bad


def long_modules(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): n for p in modules(root)
            if (n := len(p.read_text().splitlines())) > MAX_LINES}


def stray_scenario_modules(root: Path) -> list[str]:
    scenarios = root / "scenarios"
    return sorted(p.name for p in scenarios.glob("*.py")
                  if p.stem.split("_")[0] in SCENARIO_PACKAGES | {"pingpong", "hop", "intx"})


def test_no_name_is_defined_twice() -> None:
    assert twice(PACKAGE) == {}


def test_no_topology_is_any() -> None:
    assert topology_any(PACKAGE) == []


def test_modules_stay_short() -> None:
    assert long_modules(PACKAGE) == {}


def test_scenarios_top_level_holds_no_capability_module() -> None:
    assert stray_scenario_modules(PACKAGE) == []


def test_the_checks_see_what_they_refuse(tmp_path: Path) -> None:
    root = tmp_path / "harness"
    (root / "scenarios").mkdir(parents=True)
    (root / "a.py").write_text("from typing import Any, Protocol\n"
                               "class Shell(Protocol): ...\n"
                               "Kind = Literal['x']\n"
                               "def f(topology: Any) -> None: ...\n")
    (root / "b.py").write_text("class Shell: ...\nKind = Literal['y']\nMAX = int(3)\n"
                               + "x = 1\n" * MAX_LINES)
    (root / "scenarios" / "pingpong_data.py").write_text("")
    (root / "scenarios" / "threeview.py").write_text("")
    assert twice(root) == {"Shell": ["harness/a.py:2", "harness/b.py:1"],
                           "Kind": ["harness/a.py:3", "harness/b.py:2"]}
    assert topology_any(root) == ["harness/a.py:4 topology: Any"]
    assert long_modules(root) == {"harness/b.py": MAX_LINES + 3}
    assert stray_scenario_modules(root) == ["pingpong_data.py"]


def same_basenames(tests: Path) -> dict[str, list[str]]:
    """Test files sharing a name: pytest (rootdir import mode) refuses to collect both."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(tests.rglob("test_*.py")):
        found[path.name].append(str(path.relative_to(tests)))
    return {name: paths for name, paths in found.items() if len(paths) > 1}


def test_no_two_test_files_share_a_name(tmp_path: Path) -> None:
    tests = Path(__file__).resolve().parents[1]
    assert same_basenames(tests) == {}
    (tmp_path / "unit").mkdir()
    (tmp_path / "pci").mkdir()
    (tmp_path / "unit" / "test_explore.py").write_text("")
    (tmp_path / "pci" / "test_explore.py").write_text("")
    assert same_basenames(tmp_path) == {"test_explore.py": ["pci/test_explore.py",
                                                            "unit/test_explore.py"]}
