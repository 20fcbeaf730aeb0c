"""A seed item's tests are findable from its id.

Each id in harness.pytestplugin.seed_index has tests/pci/seed/test_<id>.py (hyphens as
underscores; an item with several aspects adds files test_<id>_<aspect>.py),
every seed-marked test in tests/pci/seed/ lives in its own item's file, and
tests/pci/seed/README.md lists, per id, every file holding its tests (also the
few that stay next to a module-scoped guest they share, such as
test_compare.py).  Read from the source: `pytest.mark.seed("<id>")` calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

from harness.pytestplugin.seed_index import SEED_ITEMS

ROOT = Path(__file__).resolve().parents[2]
PCI = ROOT / "tests" / "pci"


def seed_marks(path: Path) -> set[str]:
    """The item ids of every `pytest.mark.seed("<id>")` in a test file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "seed" and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "mark" and node.args
                and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return found


def item_stem(item: str) -> str:
    return "test_" + item.replace("-", "_")


def index(pci: Path) -> dict[str, list[str]]:
    """{item id: files (as tests/pci/...) holding its tests}."""
    files: dict[str, list[str]] = {}
    for path in sorted(pci.rglob("test_*.py")):
        for item in seed_marks(path):
            files.setdefault(item, []).append(f"tests/pci/{path.relative_to(pci).as_posix()}")
    return files


def index_lines(files: dict[str, list[str]]) -> list[str]:
    return [f"- `{item}`: " + ", ".join(f"`{f}`" for f in files.get(item, []))
            for item in SEED_ITEMS]


def problems(pci: Path) -> list[str]:
    found = index(pci)
    out = []
    for item in SEED_ITEMS:
        if not (pci / "seed" / f"{item_stem(item)}.py").is_file():
            out.append(f"{item}: no tests/pci/seed/{item_stem(item)}.py")
    for path in sorted((pci / "seed").glob("test_*.py")):
        owner = [i for i in SEED_ITEMS if path.stem == item_stem(i)
                 or path.stem.startswith(item_stem(i) + "_")]
        for item in seed_marks(path):
            if item not in owner:
                out.append(f"seed/{path.name} carries seed({item!r}); it belongs in "
                           f"seed/{item_stem(item)}*.py")
    readme = (pci / "seed" / "README.md").read_text() if (pci / "seed" / "README.md").is_file() \
        else ""
    out += [f"seed/README.md lacks the line: {line}" for line in index_lines(found)
            if line not in readme.splitlines()]
    return out


def test_every_seed_item_is_findable_from_its_id() -> None:
    assert problems(PCI) == []


def test_the_check_sees_a_misplaced_test_and_a_stale_index(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    for item in SEED_ITEMS:
        (seed / f"{item_stem(item)}.py").write_text(
            f"import pytest\n\n@pytest.mark.seed({item!r})\ndef test_x():\n    pass\n")
    (seed / "README.md").write_text("\n".join(index_lines(index(tmp_path))) + "\n")
    assert problems(tmp_path) == []
    (seed / "test_master_abort.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.seed('q35-hotplug')\n")
    assert problems(tmp_path) == [
        ("seed/test_master_abort.py carries seed('q35-hotplug'); it belongs in "
        "seed/test_q35_hotplug*.py"),
        ("seed/README.md lacks the line: - `q35-hotplug`: `tests/pci/seed/test_master_abort.py`, "
        "`tests/pci/seed/test_q35_hotplug.py`"),
        "seed/README.md lacks the line: - `master-abort`: ",
    ]
