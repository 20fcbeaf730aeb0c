"""Placement and slot rules: one home, read by layout (validation), where and intx.

What the PCI/PCIe specs allow, whatever QEMU takes: a root port sits on the
PCI Express root bus, a downstream port on a switch's internal bus, an
upstream port below a root or downstream port; a PCIe link reaches device 0
only.  QEMU (7.2 and 10.0) is more lenient at cold-plug; `where` says so in a
note, layout refuses the topology.

Slots: which root-bus slots the machine and the harness already use come from
the machine facts (harness/qemu/facts.py), so no rule here names a machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.qemu.machines import MGMT_SLOT, MachineFacts

PortKind = Literal["root", "downstream", "upstream"]
#: "root": the machine's root bus; "slot": below a root or downstream port (one
#: device, slot 0); "switch": a switch upstream port's internal bus (downstream
#: ports only); "bridge": a conventional bus behind a PCI bridge.
BusRole = Literal["root", "slot", "switch", "bridge"]


@dataclass(frozen=True)
class DeviceRole:
    """What a device is, as far as placement goes."""

    port: PortKind | None = None
    express_only: bool = False        # a PCI Express function that has no conventional form
    conventional_only: bool = False   # a conventional PCI function that never becomes PCIe


@dataclass(frozen=True)
class Placement:
    """allowed: the specs permit it.  reason: why not, or (allowed) where QEMU is
    lenient; fix: what to write instead (for a topology error)."""

    allowed: bool
    reason: str | None = None
    fix: str | None = None


def placement(dev: DeviceRole, bus: BusRole, bus_express: bool) -> Placement:
    """May DEV sit on a bus of role BUS?  The one placement rule of the harness."""
    if bus == "switch" and dev.port != "downstream":
        return Placement(False, "a switch's internal bus holds only downstream ports",
                         "put an xio3130-downstream on it and this device below that port")
    if dev.port == "root" and not (bus == "root" and bus_express):
        return Placement(False, "a root port belongs on the PCI Express root bus "
                                "(QEMU 7.2 cold-plugs it elsewhere too)",
                         'put it on the PCI Express root bus (machine = "q35", bus left out); '
                         "behind a port use a switch (x3130-upstream + xio3130-downstream)")
    if dev.port == "downstream" and bus != "switch":
        return Placement(False, "a downstream port belongs on a switch upstream port's bus",
                         "put an x3130-upstream below a root port and this device on its bus")
    if dev.port == "upstream" and bus != "slot":
        return Placement(False, "an upstream port belongs below a root or downstream port",
                         "set bus to the id of a pcie-root-port or xio3130-downstream")
    if dev.express_only and not bus_express:
        return Placement(True, "a PCI Express-only function on a conventional bus "
                               "(QEMU accepts it)")
    if dev.conventional_only and bus == "slot":
        return Placement(True, "a conventional PCI function directly below a PCIe port "
                               "(QEMU accepts it)")
    return Placement(True)


def slot_allowed(bus: BusRole, slot: int) -> Placement:
    """A PCIe link reaches device 0 only: below a port every other slot is illegal."""
    if bus == "slot" and slot != 0:
        return Placement(False, f"slot {slot:#x} below a port: a PCIe link reaches only "
                                "device 0 (QEMU accepts it, the spec does not)",
                         'use addr = "0.F" (functions of slot 0) or add another port')
    return Placement(True)


def reserved_slots(machine: MachineFacts) -> dict[int, str]:
    """Root-bus slots the machine or the harness already uses, with the user."""
    return {**machine.builtin, MGMT_SLOT: "the management NIC"}


def free_slot_candidates(machine: MachineFacts, bus: BusRole) -> list[int]:
    """Slots, in order of preference, where the harness places a device itself."""
    if bus == "slot":
        return [0]
    if bus == "root":
        reserved = reserved_slots(machine)
        return [s for s in range(1, 32) if s not in reserved]
    if bus == "bridge":
        # Slot 0 of a SHPC bridge cannot be hot-unplugged through SHPC: keep it free.
        return list(range(1, 32))
    return list(range(32))


def intx_slots(machine: MachineFacts, depth: int) -> list[int]:
    """Slots the INT#x stress scenario may use: behind a bridge any but 0-1; on the
    root bus those whose routing the model covers, past the harness's own."""
    if depth > 0:
        return list(range(2, 32))
    reserved = reserved_slots(machine)
    return [s for s in machine.pirq_slots if 3 <= s < MGMT_SLOT and s not in reserved]
