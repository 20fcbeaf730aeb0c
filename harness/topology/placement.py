"""Validation and the choices QEMU would otherwise make for us.

`resolve()` returns the same topology with every device's address and every
port's chassis number filled in.  The harness renders explicit values so that the
model (expect.py) and QEMU agree on placement by construction instead of both
re-implementing QEMU's first-free-slot search.

Checks made here are the certain ones: QEMU refuses the line, the guest cannot
see the function, or the PCIe spec forbids it (QEMU 7.2 accepts a device at a
nonzero slot below a root port, but a port's link leads to slot 0 only).  Whether
QEMU can place a driver on a bus at all is answered by scenarios/where.py.
"""

from __future__ import annotations

import re
from dataclasses import replace

from harness.errors import TopologyError
from harness.qemu.drivers import DriverInfo, driver_info
from harness.topology.data import MGMT_ID, Address, Device, Topology
from harness.topology.rules import (
    DeviceRole,
    free_slot_candidates,
    placement,
    slot_allowed,
)
from harness.topology.tree import BusInfo, buses, reserved_slots, shpc_handles

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
MAX_ID_LEN = 26  # node names ("<id>.disk") must stay within QEMU's 31 characters


def _err(topology: Topology, dev: Device | None, problem: str, fix: str) -> TopologyError:
    return TopologyError(f"{topology.describe(dev)}: {problem}", fix=fix)


def validate(topology: Topology) -> None:
    """Raise TopologyError for the first certain mistake; return None when fine."""
    machine = topology.facts
    if topology.memory < 16 * 1024 * 1024:
        raise _err(topology, None, f"memory {topology.memory} bytes is too small",
                   'give at least memory = "128M"')
    if topology.ahci_disk is not None and machine.builtin_ahci_bus is None:
        raise _err(topology, None, f"ahci_disk needs the q35 built-in AHCI; {machine.kind} "
                   "has none",
                   'use machine = "q35", or add a device with driver = "ich9-ahci" and disk = ...')
    seen: dict[str, Device] = {}
    for dev in topology.devices:
        _check_id(topology, dev, seen)
        seen[dev.id] = dev
    _check_boot_disk(topology, seen)
    bus_map = buses(topology)
    for dev in topology.devices:
        _check_device(topology, dev, bus_map)
    _check_cycles(topology)
    _check_addresses(topology, bus_map)
    _check_chassis(topology)


def _check_boot_disk(topology: Topology, devices: dict[str, Device]) -> None:
    boot = topology.boot_disk
    if boot is None:
        return
    if boot.controller is None:
        if topology.facts.builtin_ahci_bus is None:
            raise _err(topology, None, "a boot disk on the built-in AHCI needs q35; "
                       f"{topology.facts.kind} has none",
                       'add a device with driver = "ich9-ahci" and name it as the controller')
        if topology.ahci_disk is not None:
            raise _err(topology, None, "ahci_disk and the boot disk both want the built-in "
                       "AHCI's port 0", "drop ahci_disk or put the boot disk on an ich9-ahci")
        return
    ctrl = devices.get(boot.controller)
    if ctrl is None or ctrl.driver != "ich9-ahci":
        raise _err(topology, None, f"boot disk controller {boot.controller!r} is not an "
                   "ich9-ahci device of this topology",
                   'add a device with driver = "ich9-ahci" and that id')
    if ctrl.disk is not None:
        raise _err(topology, ctrl, "has a disk= and is the boot disk's controller: both want "
                   "port 0", "drop its disk=")


def _check_id(topology: Topology, dev: Device, seen: dict[str, Device]) -> None:
    if dev.id == MGMT_ID:
        raise _err(topology, dev, f"id {MGMT_ID!r} is reserved for the management NIC",
                   "choose another id")
    if not _ID_RE.match(dev.id) or len(dev.id) > MAX_ID_LEN:
        raise _err(topology, dev, "id is not a valid QEMU id for the harness",
                   f"start with a letter, use only letters, digits, '-' and '_', "
                   f"at most {MAX_ID_LEN} characters")
    if dev.id in seen:
        raise _err(topology, dev, "id is used twice", "give every device its own id")


def _check_device(topology: Topology, dev: Device, bus_map: dict[str, BusInfo]) -> None:
    info = driver_info(dev.driver)
    bus_name = topology.bus_of(dev)
    bus = bus_map.get(bus_name)
    if bus is None:
        if any(d.id == bus_name for d in topology.devices):
            raise _err(topology, dev, f"bus {bus_name!r} is a device that creates no bus",
                       "put it on the id of a bridge or port, or leave bus out for the root "
                       "bus")
        known = ", ".join(sorted(bus_map))
        raise _err(topology, dev, f"bus {bus_name!r} does not exist",
                   f"use one of {known} (a bus is named by the id of the bridge or port "
                   "that creates it)")
    if dev.disk is not None and (info is None or info.disk is None):
        raise _err(topology, dev, f"disk= is not supported for driver {dev.driver!r}",
                   "use disk on virtio-blk-pci, virtio-scsi-pci or ich9-ahci")
    if dev.prop("drive") is not None and dev.disk is not None:
        raise _err(topology, dev, "has both disk= and drive=",
                   "use disk = SIZE and let the harness create the drive")
    if info is not None and info.needs_drive and dev.disk is None and dev.prop("drive") is None:
        raise _err(topology, dev, f"{dev.driver} needs a disk (QEMU refuses it without a "
                   "drive)", 'add disk = "64M"')
    if dev.prop("addr") is not None or dev.prop("bus") is not None:
        raise _err(topology, dev, "addr/bus must be written as the keys addr/bus",
                   'write addr = "2.0" and bus = "rp1"')
    rule = placement(device_role(info), bus.role, bus.express)
    if not rule.allowed:
        raise _err(topology, dev, f"{dev.driver} on {bus_name!r}: {rule.reason}",
                   rule.fix or "move it to another bus")
    if dev.addr is not None:
        rule = slot_allowed(bus.role, dev.addr.slot)
        if not rule.allowed:
            raise _err(topology, dev, f"on port {bus_name!r}: {rule.reason}",
                       rule.fix or "use slot 0")
        if dev.addr.slot == 0 and bus.owner is not None and shpc_handles(topology, bus.owner):
            raise _err(topology, dev, f"slot 0 of {bus_name!r}, a bus its SHPC controller "
                       "hot-plugs: QEMU refuses slot 0 there",
                       "use slot 1-1f, or turn SHPC off (shpc = false) or ACPI bridge "
                       "hotplug on")


def device_role(info: DriverInfo | None) -> DeviceRole:
    """A driver table entry as rules.placement sees it."""
    if info is None:
        return DeviceRole()
    port = {"root-port": "root", "downstream": "downstream", "upstream": "upstream"}.get(
        info.bridge or "")
    return DeviceRole(port=port,  # type: ignore[arg-type]
                      express_only=info.pcie == "always" and port is None,
                      conventional_only=info.pcie == "never")


def _check_cycles(topology: Topology) -> None:
    parent = {d.id: d.bus for d in topology.devices if d.bus is not None}
    for dev in topology.devices:
        seen = {dev.id}
        cur = parent.get(dev.id)
        while cur is not None:
            if cur in seen:
                raise _err(topology, dev, "sits below itself (a bridge loop)",
                           "point bus at a bridge that is not below this device")
            seen.add(cur)
            cur = parent.get(cur)


def _check_addresses(topology: Topology, bus_map: dict[str, BusInfo]) -> None:
    taken: dict[tuple[str, int, int], Device] = {}
    reserved = reserved_slots(topology)
    for dev in topology.devices:
        if dev.addr is None:
            continue
        bus = topology.bus_of(dev)
        if bus_map[bus].role == "root" and dev.addr.slot in reserved:
            raise _err(topology, dev, f"slot {dev.addr.slot:#x} of {bus} is taken by "
                       f"{reserved[dev.addr.slot]}", "choose another slot or leave addr out")
        key = (bus, dev.addr.slot, dev.addr.function)
        if key in taken:
            raise _err(topology, dev, f"address {dev.addr} on {bus} is also used by "
                       f"device {taken[key].id!r}", "give one of them another addr")
        taken[key] = dev
    for (bus, slot, function), dev in taken.items():
        fn0 = taken.get((bus, slot, 0))
        if function != 0 and fn0 is None:
            raise _err(topology, dev, f"function {function} of slot {slot:#x} on {bus} "
                       "without a function 0: the guest never scans it",
                       f'add a device at addr "{slot:x}.0" with multifunction = "on"')
        if function != 0 and fn0 is not None and not fn0.flag("multifunction"):
            raise _err(topology, fn0, f"slot {slot:#x} on {bus} has several functions but "
                       "function 0 is not multifunction", 'add multifunction = "on" to it')


def _chassis_prop(dev: Device) -> str | None:
    info = driver_info(dev.driver)
    if info is None or info.bridge is None:
        return None
    if info.bridge in ("root-port", "downstream"):
        return "chassis"
    return "chassis_nr" if info.bridge == "pci-bridge" else None


def _check_chassis(topology: Topology) -> None:
    seen: dict[tuple[str, int, int], Device] = {}
    for dev in topology.devices:
        prop = _chassis_prop(dev)
        if prop is None or dev.prop(prop) is None:
            continue
        try:
            number = int(dev.prop(prop))  # type: ignore[arg-type]
            slot = int(dev.prop("slot") or 0) if prop == "chassis" else 0
        except ValueError:
            raise _err(topology, dev, f"{prop} must be a number", f"write {prop} = 1") from None
        if prop == "chassis_nr" and not 0 < number < 256:
            raise _err(topology, dev, "chassis_nr must be 1-255 (QEMU refuses 0)",
                       "give each pci-bridge its own chassis_nr, or leave it out")
        key = (prop, number, slot)
        if key in seen:
            raise _err(topology, dev, f"{prop}={number} is also used by {seen[key].id!r}",
                       f"give each one its own {prop}, or leave it out to have one assigned")
        seen[key] = dev


def _first_free(topology: Topology, bus: BusInfo, used: set[int], dev: Device) -> int:
    for slot in free_slot_candidates(topology.facts, bus.role):
        if slot not in used:
            return slot
    raise _err(topology, dev, f"no free slot left on bus {bus.name!r}",
               "add a bridge or port and put the device below it")


def resolve(topology: Topology) -> Topology:
    """Validate, then fill in every addr and chassis number (deterministically)."""
    validate(topology)
    bus_map = buses(topology)
    used: dict[str, set[int]] = {}
    for dev in topology.devices:
        if dev.addr is not None:
            used.setdefault(topology.bus_of(dev), set()).add(dev.addr.slot)
    numbers = {int(v) for d in topology.devices if (p := _chassis_prop(d))
               and (v := d.prop(p)) is not None}
    out = []
    for dev in topology.devices:
        if dev.addr is None:
            bus = topology.bus_of(dev)
            slot = _first_free(topology, bus_map[bus], used.setdefault(bus, set()), dev)
            used[bus].add(slot)
            dev = replace(dev, addr=Address(slot, 0))
        prop = _chassis_prop(dev)
        if prop is not None and dev.prop(prop) is None:
            number = next(n for n in range(1, 256) if n not in numbers)
            numbers.add(number)
            dev = replace(dev, props=dev.props + ((prop, number),))
        out.append(dev)
    return replace(topology, devices=tuple(out))


