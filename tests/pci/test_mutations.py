"""A deliberately wrong expectation is caught, for every compared field class.

One real guest (q35-pcie-to-pci: root port -> pcie-pci-bridge -> pci-bridge,
a switch, modern virtio, e1000) is booted once for the module; its QEMU and
guest views are then compared against models built from mutated topologies:
a `[device.expect]` entry set to a value that differs from what the guest
really shows (derived from the guest view, so it is wrong by construction), or
for placement a device moved to another slot in the model only.  Each case
must produce a Difference that names exactly that field, with the wrong value
on the model side and the real one on the guest side.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.factory import GuestFactory
from harness.report.collect import note_machine
from harness.scenarios.threeview import ThreeViews, collect_views
from harness.topology import Address, Topology, expected_view, load_topology
from harness.topology.data import ExpectValue
from harness.views import PciFunction, compare

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topologies" / "q35-pcie-to-pci.toml"

# (field class, device id, [device.expect] key, the Difference field it must name)
CASES: list[tuple[str, str, str, str]] = [
    ("ids", "nic0", "vendor", "vendor"),
    ("ids", "nic0", "device", "device"),
    ("ids", "disk1", "subsystem_vendor", "subsystem_vendor"),
    ("ids", "disk1", "subsystem", "subsystem"),
    ("ids", "nic0", "class_code", "class_code"),
    ("ids", "ppb", "prog_if", "prog_if"),
    ("ids", "ppb", "header_type", "header_type"),
    ("bars", "nic0", "bar1_kind", "bars[1].kind"),
    ("bars", "disk1", "bar4_size", "bars[4].size"),
    ("bars", "disk1", "bar4_64bit", "bars[4].is_64bit"),
    ("bars", "disk1", "bar4_prefetch", "bars[4].prefetch"),
    ("bars", "disk1", "bar0_kind", "bars[0].kind"),  # modern-only: no BAR0 at all
    ("capabilities", "disk1", "capabilities", "capabilities"),
    ("capabilities", "rp1", "msix_table_size", "msix_table_size"),
    ("capabilities", "ppb", "pcie_type", "pcie_type"),
    ("link", "rp1", "link_cap_speed", "link_cap_speed"),
    ("link", "rp1", "link_cap_width", "link_cap_width"),
    ("link", "rp1", "link_speed", "link_speed"),
    ("link", "net1", "link_width", "link_width"),
    ("interrupt", "nic0", "interrupt_pin", "interrupt_pin"),
    ("bridge", "pb1", "secondary_bus", "secondary_bus"),
    ("bridge", "pb1", "subordinate_bus", "subordinate_bus"),
    ("bridge", "ppb", "io_window", "io_window"),
    ("bridge", "rp1", "mem_window", "mem_window"),
    ("bridge", "ppb", "pref_window", "pref_window"),
    ("hotplug", "dn1", "slot_hotplug_capable", "slot_hotplug_capable"),
    ("hotplug", "ppb", "bus_hotplug", "bus_hotplug"),
    ("driver", "nic0", "driver", "driver"),
]


@pytest.fixture(scope="module")
def module_guest(harness_factory: GuestFactory,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, ThreeViews]]:
    """The module's one guest: its topology and three views (guest shut down after)."""
    topology = load_topology(TOPOLOGY)
    base = tmp_path_factory.mktemp("mutation-guest")
    with harness_factory.guest(topology, base, name="mutation") as guest:
        views = collect_views(guest)
    diffs = views.differences()
    assert diffs == [], "the unmutated guest must compare clean:\n" + "\n".join(map(str, diffs))
    yield topology, views
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def real(module_guest: tuple[Topology, ThreeViews]) -> tuple[Topology, ThreeViews]:
    """The module's guest, for one test: the report files the test under its machine
    whichever test booted the guest."""
    note_machine(module_guest[0].machine)
    return module_guest


def real_value(views: ThreeViews, device_id: str, key: str) -> Any:
    """What the guest (or, for QEMU-only fields, QEMU) really shows for KEY."""
    qemu = next(f for f in views.qemu.functions if f.id == device_id)
    guest = views.guest.by_path()[qemu.path]
    if key.startswith("bar"):
        index, attr = int(key[3]), key[5:]
        bar = next((b for b in guest.bars or () if b.index == index), None)
        if bar is None:
            return "none"
        return getattr(bar, "is_64bit" if attr == "64bit" else attr)
    source: PciFunction = qemu if key == "bus_hotplug" else guest
    return getattr(source, key)


def wrong(value: Any) -> ExpectValue:
    """A value of the same kind that is certainly not VALUE."""
    others: dict[Any, ExpectValue] = {"io": "mem", "mem": "io", "none": "io",
                                      "acpi-pcihp": "shpc", "": "endpoint"}
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return 8.0 if value != 8.0 else 5.0
    if isinstance(value, int):
        return value + 1 if value < 0xFFFF else value - 1
    if isinstance(value, tuple):
        return tuple(sorted(set(value) ^ {"pm"}))
    if value in others:
        return others[value]
    if isinstance(value, str) and (value == "off" or value.startswith("0x")):  # a window
        return "0x1000-0x1fff" if value == "off" else "off"
    if isinstance(value, str):
        return value + "-wrong"
    raise AssertionError(f"no wrong value for {value!r}")


def with_expect(topology: Topology, device_id: str, key: str,
                value: ExpectValue) -> Topology:
    devices = tuple(replace(d, expect=d.expect + ((key, value),)) if d.id == device_id else d
                    for d in topology.devices)
    return replace(topology, devices=devices)


def test_every_field_class_has_a_case() -> None:
    assert {c[0] for c in CASES} == {"ids", "bars", "capabilities", "link", "interrupt",
                                     "bridge", "hotplug", "driver"}


@pytest.mark.parametrize(("field_class", "device_id", "key", "field"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_wrong_expectation_is_reported(real: tuple[Topology, ThreeViews], artifacts: Path,
                                       field_class: str, device_id: str, key: str,
                                       field: str) -> None:
    topology, views = real
    actual = real_value(views, device_id, key)
    assert actual is not None, f"{device_id}.{key}: the guest and QEMU do not show it"
    bad = wrong(actual)
    model = expected_view(with_expect(topology, device_id, key, bad))
    diffs = compare(model, views.qemu, views.guest)
    (artifacts / "differences.txt").write_text("\n".join(map(str, diffs)) + "\n")
    assert [(d.device, d.field) for d in diffs] == [(device_id, field)], (
        f"expect {key}={bad!r} (real {actual!r}) gave:\n" + "\n".join(map(str, diffs)))
    diff = diffs[0]
    expected_model = "absent" if bad == "none" else bad
    shown = diff.qemu if key == "bus_hotplug" else diff.guest
    assert (diff.model, shown) == (expected_model, "absent" if actual == "none" else actual), diff


def test_wrong_placement_is_reported(real: tuple[Topology, ThreeViews]) -> None:
    """The model puts nic0 one slot further on pb1: the real slot has a function the
    model lacks, and the model's slot is empty in QEMU and the guest."""
    topology, views = real
    nic = topology.device("nic0")
    assert nic.addr is not None
    moved_to = Address(nic.addr.slot + 8, 0)
    moved = replace(topology, devices=tuple(replace(d, addr=moved_to) if d.id == "nic0" else d
                                            for d in topology.devices))
    diffs = compare(expected_view(moved), views.qemu, views.guest)
    real_path = next(f.path for f in views.qemu.functions if f.id == "nic0")
    model_path = real_path[:-1] + (str(moved_to),)
    assert sorted((d.field, d.model, d.qemu, d.guest) for d in diffs) == [
        ("present", False, True, True), ("present", True, False, False)], diffs
    assert {d.device for d in diffs} == {"nic0"}, diffs
    assert model_path not in views.qemu.by_path() and model_path not in views.guest.by_path()

