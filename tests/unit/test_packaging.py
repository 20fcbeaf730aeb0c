"""Packaging: the wheel's package list, and the package data the harness finds
through importlib.resources being the checkout's (tox installs a real wheel,
bin/ an editable one).  tests/pci/test_wheel_install.py builds, installs and
runs a real wheel."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.guest.image import recipe_dir
from harness.paths import guest_images_root, suite_root

CHECKOUT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())


def unlisted_packages(root: Path, listed: set[str]) -> list[str]:
    """Packages under root/harness that the explicit list would leave out of the wheel."""
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "harness").rglob(
        "__init__.py")}
    return sorted(found - listed)


def files(directory: Path, pattern: str = "*") -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def test_every_harness_package_is_in_the_explicit_list() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert unlisted_packages(CHECKOUT, listed) == []


def test_a_package_missing_from_the_list_is_named() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"]) - {"harness.qemu"}
    assert unlisted_packages(CHECKOUT, listed) == ["harness.qemu"]


def test_installed_recipes_are_the_checkouts() -> None:
    assert files(guest_images_root()) == files(CHECKOUT / "guest-images")


def test_installed_suite_is_the_checkouts() -> None:
    root = suite_root()
    assert files(root / "tests" / "pci", "*.py") == files(CHECKOUT / "tests" / "pci", "*.py")
    assert files(root / "topologies", "*.toml") == files(CHECKOUT / "topologies", "*.toml")


def test_shipped_suite_ini_agrees_with_pyproject() -> None:
    """The wheel's suite runs with harness/suite/pytest.ini, a checkout with pyproject."""
    ini = configparser.ConfigParser()
    ini.read(CHECKOUT / "harness" / "suite" / "pytest.ini")
    ours = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert (ini["pytest"]["testpaths"].split(), ini["pytest"]["addopts"]) == \
        (ours["testpaths"], ours["addopts"])


def test_unknown_recipe_names_the_ones_there(tmp_path: Path) -> None:
    (tmp_path / "debian12").mkdir()
    (tmp_path / "debian12" / "recipe.toml").write_text("")
    assert recipe_dir("debian12", tmp_path) == tmp_path / "debian12"
    with pytest.raises(UserError, match=r"recipe 'ahci' not found: .* \(recipes there: debian12\)"):
        recipe_dir("ahci", tmp_path)


def test_missing_package_data_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a broken install (a mapped directory that does not import) says."""
    from harness import paths

    def missing(package: str) -> None:
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(paths.resources, "files", missing)
    with pytest.raises(UserError, match=r"lacks its package data \(harness.guest_images\)"):
        guest_images_root()
