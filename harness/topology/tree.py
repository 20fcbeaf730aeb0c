"""Walks over a topology's bridge tree: its buses, parents before children, paths.

Pure functions of the data (no validation: placement.py checks a topology, and
resolves the addresses QEMU would otherwise choose).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError, TopologyError
from harness.qemu.drivers import BUILTIN, driver_info
from harness.qemu.machines import MGMT_SLOT
from harness.topology.data import MGMT_ID, Address, Device, Topology, machine_version
from harness.topology.rules import BusRole
from harness.topology.rules import reserved_slots as machine_reserved_slots

__all__ = ["BusInfo", "acpi_bridge_hotplug", "builtin_path", "buses", "mgmt_device",
           "parents_first", "path_of", "reserved_slots", "shpc_handles"]


@dataclass(frozen=True)
class BusInfo:
    """A bus of the topology: who creates it and what it may hold.

    role: see rules.BusRole.
    """

    name: str
    express: bool
    role: BusRole
    owner: Device | None  # the bridge that creates it, None for the root bus


def buses(topology: Topology) -> dict[str, BusInfo]:
    out = {topology.root_bus: BusInfo(topology.root_bus, topology.facts.express, "root", None)}
    for dev in topology.devices:
        info = driver_info(dev.driver)
        if info is None or info.bridge is None:
            continue
        if info.bridge in ("root-port", "downstream"):
            out[dev.id] = BusInfo(dev.id, True, "slot", dev)
        elif info.bridge == "upstream":
            out[dev.id] = BusInfo(dev.id, True, "switch", dev)
        else:
            out[dev.id] = BusInfo(dev.id, False, "bridge", dev)
    return out


def acpi_bridge_hotplug(topology: Topology) -> bool:
    """ACPI hotplug behind bridges: on by default; on q35 only from machine type 6.1."""
    return topology.facts.bridge_acpi(machine_version(topology.machine), topology.acpi_hotplug)


def shpc_handles(topology: Topology, bridge: Device) -> bool:
    """Whether the bus BRIDGE creates is hot-plugged by its own SHPC controller:
    an SHPC bridge (pci-bridge, pcie-pci-bridge) with SHPC on and no ACPI bridge
    hotplug.  QEMU then refuses any device at slot 0 of that bus, cold-plugged
    too ("Unsupported PCI slot 0 for standard hotplug controller"; 7.2.22 and
    10.0.2, found by explore)."""
    info = driver_info(bridge.driver)
    return (info is not None and info.bridge in ("pci-bridge", "pcie-pci-bridge")
            and bridge.flag("shpc") is not False and not acpi_bridge_hotplug(topology))


def reserved_slots(topology: Topology) -> dict[int, str]:
    """Root-bus slots the machine or the harness already uses, with the user."""
    return machine_reserved_slots(topology.facts)


def mgmt_device(topology: Topology) -> Device:
    """The management NIC every machine gets (user-mode net, SSH forwarded)."""
    # No option ROM: SeaBIOS would run the NIC's iPXE ROM at every cold boot
    # (slow under TCG), and nothing ever network-boots the management NIC.
    return Device(id=MGMT_ID, driver="virtio-net-pci", bus=topology.root_bus,
                  addr=Address(MGMT_SLOT, 0), props=(("romfile", ""),))


def parents_first(topology: Topology) -> tuple[Device, ...]:
    """Devices ordered so that every bridge comes before the devices on its bus."""
    done: set[str] = set()
    ordered: list[Device] = []
    pending = list(topology.devices)
    while pending:
        rest = []
        for dev in pending:
            if dev.bus is None or dev.bus == topology.root_bus or dev.bus in done:
                ordered.append(dev)
                done.add(dev.id)
            else:
                rest.append(dev)
        if len(rest) == len(pending):  # validate() rules this out
            raise TopologyError(f"{topology.describe(rest[0])}: its bus is never created",
                                fix="check bus names")
        pending = rest
    return tuple(ordered)


def path_of(topology: Topology, dev: Device) -> tuple[str, ...]:
    """The bridge-tree path ("02.0", "00.0") of a resolved device."""
    parts: list[str] = []
    cur: Device | None = dev
    while cur is not None:
        assert cur.addr is not None, "path_of needs a resolved topology"
        parts.append(str(cur.addr))
        bus = topology.bus_of(cur)
        cur = None if bus == topology.root_bus else topology.device(bus)
    return tuple(reversed(parts))


def builtin_path(topology: Topology, driver: str) -> tuple[str, ...]:
    """The root-bus path of a machine's built-in function (q35's AHCI is 1f.2)."""
    for (slot, fn), info in BUILTIN[topology.kind].items():
        if info.driver == driver:
            return (f"{slot:02x}.{fn}",)
    raise HarnessError(f"{topology.machine} has no built-in {driver}")
