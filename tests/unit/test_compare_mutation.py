"""compare() and diff_views(): a deliberately wrong expectation is caught, per field class.

The QEMU and guest views are what a real QEMU 7.2 and a real Debian 6.1 guest
said about one booted machine (tests/unit/data/guest, see record_guest.py): each
view comes from its own source, so an expectation is compared with two
independent observations, never with a copy of itself.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.topology import expected_view, load_topology, topology_from_dict
from harness.topology.data import Address, ExpectValue
from harness.views import Difference, compare, diff_views, parse_guest_view, parse_qemu_view
from harness.views.pciview import PciView

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]


def views(name: str) -> tuple[Any, PciView, PciView]:
    rec = json.loads((DATA / "guest" / f"{name}.json").read_text())
    topo = load_topology(ROOT / rec["topology"])
    qemu = parse_qemu_view(rec["query-pci"], rec["qom"])
    guest = parse_guest_view(rec["guest_dump"])  # the guest's own sysfs, drivers included
    return topo, qemu, guest


def with_expect(topo: Any, device_id: str, key: str, value: ExpectValue) -> Any:
    devices = tuple(replace(d, expect=d.expect + ((key, value),)) if d.id == device_id else d
                    for d in topo.devices)
    return replace(topo, devices=devices)


def test_unmutated_views_agree() -> None:
    topo, qemu, guest = views("q35-pcie-to-pci")
    assert compare(expected_view(topo), qemu, guest) == []


# (device, expect key, wrong value, the field the Difference must name)
MUTATIONS = [
    ("nic0", "vendor", 0x10EC, "vendor"),
    ("nic0", "device", 0x8139, "device"),
    ("disk1", "subsystem", 0x0002, "subsystem"),
    ("disk1", "subsystem_vendor", 0x8086, "subsystem_vendor"),
    ("nic0", "class_code", 0x0280, "class_code"),
    ("ppb", "prog_if", 1, "prog_if"),
    ("ppb", "header_type", 0, "header_type"),
    ("disk1", "bar4_size", 8192, "bars[4].size"),
    ("disk1", "bar0_kind", "io", "bars[0].kind"),
    ("disk1", "bar4_64bit", False, "bars[4].is_64bit"),
    ("disk1", "bar4_prefetch", False, "bars[4].prefetch"),
    ("disk1", "capabilities", ("msix", "vendor"), "capabilities"),
    ("rp1", "msix_table_size", 2, "msix_table_size"),
    ("ppb", "pcie_type", "endpoint", "pcie_type"),
    ("rp1", "link_cap_speed", 8.0, "link_cap_speed"),
    ("rp1", "link_cap_width", 4, "link_cap_width"),
    ("rp1", "link_speed", 16.0, "link_speed"),
    ("net1", "link_width", 2, "link_width"),
    ("nic0", "interrupt_pin", 2, "interrupt_pin"),
    ("dn1", "slot_hotplug_capable", False, "slot_hotplug_capable"),
    ("pb1", "bus_hotplug", "shpc", "bus_hotplug"),
    ("pb1", "secondary_bus", 9, "secondary_bus"),
    ("pb1", "subordinate_bus", 9, "subordinate_bus"),
    ("rp1", "mem_window", "0x1000-0x1fff", "mem_window"),
    ("nic0", "driver", "e1000e", "driver"),
]


@pytest.mark.parametrize("device,key,value,field", MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_wrong_expectation_is_detected(device: str, key: str, value: ExpectValue,
                                       field: str) -> None:
    topo, qemu, guest = views("q35-pcie-to-pci")
    diffs = compare(expected_view(with_expect(topo, device, key, value)), qemu, guest)
    assert [(d.device, d.field) for d in diffs] == [(device, field)], diffs
    assert diffs[0].model == value or field.startswith("bars")


def test_wrong_placement_is_a_presence_difference() -> None:
    topo, qemu, guest = views("q35-pcie-to-pci")
    moved = replace(topo, devices=tuple(replace(d, addr=Address(4, 0)) if d.id == "nic0" else d
                                        for d in topo.devices))
    diffs = compare(expected_view(moved), qemu, guest)
    assert Difference("nic0", "present", True, False, False) in diffs
    assert Difference("nic0", "present", False, True, True) in diffs


def test_qemu_and_guest_disagreeing_is_reported_without_the_model() -> None:
    _, qemu, guest = views("pc-nested-bridges")
    f = guest.function("04.0/01.0")
    tampered = replace(guest, functions=tuple(
        replace(g, secondary_bus=7) if g is f else g for g in guest.functions))
    topo = load_topology(ROOT / "topologies/pc-nested-bridges.toml")
    diffs = compare(expected_view(topo), qemu, tampered)
    assert [(d.device, d.field, d.model, d.qemu, d.guest) for d in diffs] == [
        ("br2", "secondary_bus", None, 2, 7)]


def test_bar_address_mismatch() -> None:
    topo, qemu, guest = views("q35-pcie-to-pci")
    bad = replace(guest, functions=tuple(
        replace(g, bars=tuple(replace(b, address=0xDEAD0000) if b.index == 0 else b
                              for b in g.bars or ())) if g.path == ("02.0", "00.0", "01.0",
                                                                    "02.0") else g
        for g in guest.functions))
    diffs = compare(expected_view(topo), qemu, bad)  # the model knows no address
    assert [(d.device, d.field) for d in diffs] == [("nic0", "bars[0].address")]


def test_root_bus_hotplug_difference() -> None:
    topo = topology_from_dict({"machine": "pc"})
    rec = json.loads((DATA / "q35-ahci.json").read_text())
    diffs = compare(expected_view(topo), parse_qemu_view(rec["query-pci"], rec["qom"]))
    assert Difference("root bus", "bus_hotplug", "acpi-bsel", "none", None) in diffs


def test_diff_views_reports_hot_unplug_and_changes() -> None:
    rec = json.loads((DATA / "q35-link-speeds.json").read_text())
    before = parse_qemu_view(rec["query-pci"], rec["qom"])
    after_pci = copy.deepcopy(rec["query-pci"])
    rp1 = next(d for d in after_pci[0]["devices"] if d["qdev_id"] == "rp1")
    rp1["pci_bridge"]["devices"] = []  # disk1 unplugged
    after = parse_qemu_view(after_pci, rec["qom"])
    changes = diff_views(before, after)
    assert [(c.device, c.field, c.before, c.after) for c in changes] == [
        ("disk1", "present", True, False)]
    assert diff_views(before, PciView.from_json(before.to_json())) == []


def test_difference_text_names_everything() -> None:
    d = Difference("rp1", "link_width", 2, None, 1)
    assert str(d) == "rp1: link_width: model=2 qemu=None guest=1"
