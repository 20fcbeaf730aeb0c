"""The guest view from real guests: GUEST_DUMP_SCRIPT output recorded in booted
Debian 6.1 guests on QEMU 7.2 (tests/unit/data/guest, see record_guest.py).

The parsers and the model must agree with what the guest and QEMU really said;
a rule or parser change that breaks a real machine fails here, without QEMU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.topology import Topology, default_topology, expected_view, load_topology
from harness.views import compare, parse_guest_view, parse_qemu_view
from harness.views.pciview import PciView

DATA = Path(__file__).parent / "data" / "guest"
ROOT = Path(__file__).parents[2]
RECORDS = sorted(DATA.glob("*.json"))


def load(path: Path) -> tuple[Topology, PciView, PciView, dict[str, Any]]:
    rec: dict[str, Any] = json.loads(path.read_text())
    name = rec["topology"]
    topo = default_topology(name) if name in ("pc", "q35") else load_topology(ROOT / name)
    return (topo, parse_qemu_view(rec["query-pci"], rec["qom"]),
            parse_guest_view(rec["guest_dump"]), rec)


def test_there_are_recordings_of_both_machines() -> None:
    kinds = {load(p)[0].kind for p in RECORDS}
    assert kinds == {"pc", "q35"}, f"recordings {[p.name for p in RECORDS]}"


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_real_guest_agrees_with_model_and_qemu(path: Path) -> None:
    topo, qemu, guest, _ = load(path)
    diffs = compare(expected_view(topo), qemu, guest)
    assert diffs == [], "\n".join(map(str, diffs))


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_guest_lists_the_functions_qemu_lists(path: Path) -> None:
    _, qemu, guest, rec = load(path)
    assert [f.path for f in guest.functions] == [f.path for f in qemu.functions]
    # Every function's config came through whole (256 bytes: capabilities decoded).
    assert all(f.capabilities is not None for f in guest.functions)
    assert rec["guest_dump"].count("@@ fn ") == len(guest.functions)


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_bar_addresses_agree_where_qemu_maps_them(path: Path) -> None:
    _, qemu, guest, _ = load(path)
    gmap = guest.by_path()
    compared = 0
    for f in qemu.functions:
        gbars = {b.index: b for b in gmap[f.path].bars or ()}
        for bar in f.bars or ():
            if bar.address is not None:
                assert gbars[bar.index].address == bar.address, (f.name, bar, gbars[bar.index])
                compared += 1
    assert compared > 0


def test_legacy_ide_ports_are_not_bars() -> None:
    # PIIX3 IDE in compatibility mode: the kernel pins 0x1f0/0x3f6/0x170/0x376 in
    # resource slots 0-3 (IORESOURCE_PCI_FIXED) but only BAR4 (bus master) exists.
    _, qemu, guest, rec = load(DATA / "default-pc.json")
    assert "0x00000000000001f0" in rec["guest_dump"]
    ide = guest.by_path()[("01.1",)]
    assert [b.index for b in ide.bars or ()] == [4] == [
        b.index for b in qemu.by_path()[("01.1",)].bars or ()]


def test_modern_virtio_behind_port_in_a_real_guest() -> None:
    _, qemu, guest, _ = load(DATA / "q35-link-speeds.json")
    path = next(f.path for f in qemu.functions if f.id == "disk1")
    disk = guest.by_path()[path]
    assert (disk.vendor, disk.device) == (0x1AF4, 0x1042)
    assert not [b for b in disk.bars or () if b.kind == "io"]
    bar4 = next(b for b in disk.bars or () if b.index == 4)
    assert (bar4.is_64bit, bar4.prefetch) == (True, True)
    assert disk.pcie_type == "endpoint" and disk.driver == "virtio-pci"


def test_port_link_in_a_real_guest() -> None:
    _, qemu, guest, _ = load(DATA / "q35-link-speeds.json")
    by_id = {f.id: f.path for f in qemu.functions if f.id}
    rp1 = guest.by_path()[by_id["rp1"]]
    assert (rp1.link_cap_speed, rp1.link_cap_width) == (8.0, 4)  # x-speed=8, x-width=4
    assert (rp1.link_speed, rp1.link_width) == (2.5, 1)  # trained to the virtio endpoint
    rp4 = guest.by_path()[by_id["rp4"]]  # empty port: its own maximum
    assert (rp4.link_speed, rp4.link_width) == (16.0, 16)
