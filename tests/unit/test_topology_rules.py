"""Placement and slot rules (topology/rules.py): one rule set for layout, where and intx."""

from __future__ import annotations

import pytest

from harness.qemu.machines import MACHINES, MGMT_SLOT
from harness.topology.rules import (
    DeviceRole,
    free_slot_candidates,
    intx_slots,
    placement,
    reserved_slots,
    slot_allowed,
)

ROOT_PORT = DeviceRole(port="root")
DOWNSTREAM = DeviceRole(port="downstream")
UPSTREAM = DeviceRole(port="upstream")
ENDPOINT = DeviceRole()


@pytest.mark.parametrize(("dev", "bus", "express", "allowed"), [
    (ROOT_PORT, "root", True, True), (ROOT_PORT, "root", False, False),
    (ROOT_PORT, "slot", True, False), (ROOT_PORT, "bridge", False, False),
    (DOWNSTREAM, "switch", True, True), (DOWNSTREAM, "root", True, False),
    (UPSTREAM, "slot", True, True), (UPSTREAM, "root", True, False),
    (ENDPOINT, "switch", True, False), (ENDPOINT, "slot", True, True),
    (ENDPOINT, "bridge", False, True), (ENDPOINT, "root", False, True),
])
def test_placement_follows_the_spec(dev: DeviceRole, bus: str, express: bool,
                                    allowed: bool) -> None:
    rule = placement(dev, bus, express)  # type: ignore[arg-type]
    assert rule.allowed is allowed, (dev, bus, express, rule)
    assert (rule.reason is None) is allowed or rule.reason is not None


def test_lenient_placements_are_allowed_with_a_note() -> None:
    assert placement(DeviceRole(express_only=True), "bridge", False).reason == \
        "a PCI Express-only function on a conventional bus (QEMU accepts it)"
    assert "directly below a PCIe port" in (
        placement(DeviceRole(conventional_only=True), "slot", True).reason or "")


def test_a_port_link_reaches_slot_0_only() -> None:
    assert slot_allowed("slot", 0).allowed and slot_allowed("bridge", 5).allowed
    rule = slot_allowed("slot", 3)
    assert not rule.allowed and "0x3" in (rule.reason or "") and "spec" in (rule.reason or "")


def test_reserved_slots_name_the_builtin_functions_qemu_puts_there() -> None:
    # Written from `info pci` of `-M pc|q35 -nodefaults` (7.2.22 and 10.0.2),
    # not from the table the machine facts derive them from.
    expected = {
        "pc": {0: "the i440FX host bridge", 1: "the PIIX3 ISA bridge, piix3-ide IDE, PIIX4_PM ACPI PM",
               MGMT_SLOT: "the management NIC"},
        "q35": {0: "the mch host bridge",
                0x1F: "the ICH9-LPC LPC, ich9-ahci AHCI, ICH9-SMB SMBus",
                MGMT_SLOT: "the management NIC"},
    }
    for kind, machine in MACHINES.items():
        reserved = reserved_slots(machine)
        assert dict(reserved) == expected[kind], (kind, dict(reserved), expected[kind])
        assert not set(free_slot_candidates(machine, "root")) & set(reserved), kind
    assert free_slot_candidates(MACHINES["q35"], "slot") == [0]
    assert free_slot_candidates(MACHINES["pc"], "bridge")[0] == 1


def test_intx_slots_stay_inside_the_routing_model() -> None:
    assert intx_slots(MACHINES["pc"], 0) == list(range(3, 0x1E))
    assert intx_slots(MACHINES["q35"], 0) == list(range(3, 0x18))
    assert intx_slots(MACHINES["q35"], 1) == list(range(2, 32))
