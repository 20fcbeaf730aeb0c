"""The driver table's own rules: one row per driver, and every guest module it
names is shipped in the guest image, so a new driver cannot reach a boot with a
module the guest does not have (it showed only as a three-view `driver` difference)."""

import tomllib

import pytest

from harness.guest.image import recipe_dir
from harness.qemu.drivers import BUILTIN, DRIVERS, BarSpec, DriverInfo, driver_table


def shipped_modules(flavour: str) -> set[str]:
    recipe = tomllib.loads((recipe_dir(flavour) / "recipe.toml").read_text())
    return set(recipe["modules"])


def test_a_second_row_for_a_driver_is_refused() -> None:
    row = DriverInfo("nvme", 0x1B36, 0x0010, 0x010802, 0x1AF4, 0x1100, 1)
    other = DriverInfo("nvme", 0x1B36, 0x0010, 0x010802, 0x1AF4, 0x1100, 1,
                       bars=(BarSpec(0, "mem", 16384, True),))
    assert driver_table((row,)) == {"nvme": row}
    with pytest.raises(ValueError, match="two rows for 'nvme'"):
        driver_table((row, other))


def missing_modules(rows: list[DriverInfo], shipped: set[str]) -> dict[str, list[str]]:
    return {row.driver: sorted(set(row.modules) - shipped) for row in rows
            if set(row.modules) - shipped}


def test_every_driver_module_is_in_the_default_guest() -> None:
    rows = list(DRIVERS.values()) + [i for b in BUILTIN.values() for i in b.values()]
    missing = missing_modules(rows, shipped_modules("debian12"))
    assert missing == {}, f"modules the table needs but guest-images/debian12 lacks: {missing}"


def test_the_module_check_names_a_module_the_recipe_lacks() -> None:
    row = DriverInfo("nvme", 0x1B36, 0x0010, 0x010802, 0x1AF4, 0x1100, 1,
                     modules=("nvme", "no_such_module"))
    shipped = shipped_modules("debian12") | {"nvme"}
    assert missing_modules([row], shipped) == {"nvme": ["no_such_module"]}
