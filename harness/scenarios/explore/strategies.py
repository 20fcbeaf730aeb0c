"""Hypothesis strategies for machines nobody wrote, drawn from what the model knows.

Every topology `machines()` draws is one the model calls valid: drivers come
from the driver table (harness/qemu/drivers.py: a driver added there is drawn
without a change here), buses and slots from the placement rules
(topology/rules.py: `placement`, `slot_allowed`, `free_slot_candidates`), and
the draw ends with layout.validate, so a strategy bug fails as a TopologyError
in the unit tests and never reaches QEMU.

Properties are drawn only where QEMU has them: `props` maps a driver to the
-device property names this QEMU lists for it (props.device_properties, probed
once per binary); a property missing there is never drawn.  What each property
may be set to is written once here, by what the property means:
- ports: hotplug on/off, chassis/slot, link speed/width (x-speed, x-width);
- pci-bridge: shpc on/off, chassis_nr;
- virtio: legacy/transitional/modern-only (disable-legacy, disable-modern),
  vectors (0 = no MSI-X);
- NICs: romfile="" (no option ROM); disks: `disk = SIZE` where the table says
  what a disk means for the driver; any PCI device: acpi-index (unique).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import strategies as st

from harness.qemu.drivers import DRIVERS, DriverInfo
from harness.qemu.machines import MACHINES
from harness.topology.data import Address, Device, PropValue, Topology
from harness.topology.expect import PORT_SPEEDS
from harness.topology.placement import device_role, validate
from harness.topology.rules import free_slot_candidates, placement, reserved_slots, slot_allowed
from harness.topology.tree import BusInfo, buses, shpc_handles

#: Machine types drawn: the aliases and versioned types both reference QEMUs
#: (7.2.22, 10.0.2) build, chosen where a compat rule of the model changes:
#: q35 before 6.1 has no ACPI bridge hotplug, virtio-net has 3 vectors before
#: 6.0, virtio-rng no MSI-X before 7.2; 4.0 is the oldest type that boots the
#: guest kernel (facts.KERNEL_BOOT_MIN_MACHINE).
MACHINE_TYPES = ("q35", "pc", "pc-q35-4.0", "pc-q35-5.2", "pc-q35-6.0", "pc-q35-7.1",
                 "pc-q35-7.2", "pc-i440fx-5.2", "pc-i440fx-6.2", "pc-i440fx-7.2")
MAX_DEVICES = 10
MAX_FUNCTIONS = 3           # functions of one multifunction slot
DISK_SIZES = (1 << 20, 4 << 20, 16 << 20)
LINK_WIDTHS = (1, 2, 4, 8, 12, 16, 32)
VIRTIO_MODES = ("auto", "transitional", "modern-only", "legacy-only")
MACHINE_MEMORY = 256 * 1024 * 1024

Props = Mapping[str, frozenset[str]]


@dataclass
class _Draft:
    """The topology being drawn: devices so far and what they use."""

    topology: Topology
    devices: list[Device]
    used: dict[str, set[int]]            # bus -> slots taken
    chassis: set[tuple[str, int, int]]   # (prop, chassis, slot) taken
    acpi_indexes: set[int]
    link_speeds: tuple[str, ...] | None = None  # x-speed values this QEMU takes
    displays: int = 0

    def current(self) -> Topology:
        return Topology(machine=self.topology.machine, memory=self.topology.memory,
                        devices=tuple(self.devices), acpi_hotplug=self.topology.acpi_hotplug)


def drawable_drivers(props: Props | None = None) -> tuple[DriverInfo, ...]:
    """Every table driver this QEMU has (all of them when `props` is None)."""
    return tuple(info for name, info in sorted(DRIVERS.items())
                 if props is None or name in props)


def _has(props: Props | None, driver: str, name: str) -> bool:
    return props is not None and name in props.get(driver, frozenset())


def _depth(topo: Topology, bus: str) -> int:
    depth = 0
    while bus != topo.root_bus:
        bus = topo.bus_of(topo.device(bus))
        depth += 1
    return depth


def _candidate_buses(draft: _Draft, info: DriverInfo) -> list[BusInfo]:
    topo = draft.current()
    out = []
    for bus in buses(topo).values():
        if not placement(device_role(info), bus.role, bus.express).allowed:
            continue
        if _free_slots(draft, bus):
            out.append(bus)
    # Deepest first: an index near 0 nests (depth 4 and more is common, not rare).
    return sorted(out, key=lambda b: (-_depth(topo, b.name), b.name))


def _free_slots(draft: _Draft, bus: BusInfo, explicit: bool = False) -> list[int]:
    """Slots a device may take: any the rules allow when its addr is chosen, else
    those the harness's own first-free search would try (in its order)."""
    used = draft.used.get(bus.name, set())
    machine = draft.topology.facts
    reserved = reserved_slots(machine) if bus.role == "root" else {}
    slots = range(32) if explicit else free_slot_candidates(machine, bus.role)
    shpc = bus.owner is not None and shpc_handles(draft.current(), bus.owner)
    return [s for s in slots if s not in used and s not in reserved
            and slot_allowed(bus.role, s).allowed and not (shpc and s == 0)]


@st.composite
def _virtio_props(draw: st.DrawFn, info: DriverInfo, props: Props | None
                  ) -> list[tuple[str, PropValue]]:
    out: list[tuple[str, PropValue]] = []
    mode = draw(st.sampled_from(VIRTIO_MODES))
    if mode == "transitional" and _has(props, info.driver, "disable-legacy"):
        out.append(("disable-legacy", "off"))
    elif mode == "modern-only" and _has(props, info.driver, "disable-legacy"):
        out.append(("disable-legacy", "on"))
    elif mode == "legacy-only" and _has(props, info.driver, "disable-modern"):
        out += [("disable-legacy", "off"), ("disable-modern", "on")]
    if _has(props, info.driver, "vectors") and draw(st.booleans()):
        out.append(("vectors", draw(st.sampled_from((0, 2, 3, 8)))))
    return out


@st.composite
def _port_props(draw: st.DrawFn, draft: _Draft, info: DriverInfo, props: Props | None
                ) -> list[tuple[str, PropValue]]:
    speeds = sorted(draft.link_speeds or PORT_SPEEDS)
    out: list[tuple[str, PropValue]] = []
    if _has(props, info.driver, "hotplug") and draw(st.booleans()):
        out.append(("hotplug", draw(st.sampled_from(("on", "off")))))
    if _has(props, info.driver, "x-speed") and draw(st.booleans()):
        out.append(("x-speed", draw(st.sampled_from(speeds))))
    if _has(props, info.driver, "x-width") and draw(st.booleans()):
        out.append(("x-width", draw(st.sampled_from(LINK_WIDTHS))))
    if _has(props, info.driver, "chassis") and draw(st.booleans()):
        chassis = draw(st.integers(1, 255))
        slot = draw(st.integers(0, 31))
        if ("chassis", chassis, slot) not in draft.chassis:
            draft.chassis.add(("chassis", chassis, slot))
            out += [("chassis", chassis), ("slot", slot)]
    return out


@st.composite
def _bridge_props(draw: st.DrawFn, draft: _Draft, info: DriverInfo, props: Props | None
                  ) -> list[tuple[str, PropValue]]:
    out: list[tuple[str, PropValue]] = []
    if _has(props, info.driver, "shpc") and draw(st.booleans()):
        out.append(("shpc", draw(st.sampled_from(("on", "off")))))
    if _has(props, info.driver, "chassis_nr") and draw(st.booleans()):
        number = draw(st.integers(1, 255))
        if ("chassis_nr", number, 0) not in draft.chassis:
            draft.chassis.add(("chassis_nr", number, 0))
            out.append(("chassis_nr", number))
    return out


@st.composite
def _device_props(draw: st.DrawFn, draft: _Draft, info: DriverInfo, props: Props | None
                  ) -> tuple[list[tuple[str, PropValue]], int | None]:
    out: list[tuple[str, PropValue]] = []
    if info.virtio_type is not None:
        out += draw(_virtio_props(info, props))
    if info.bridge in ("root-port", "downstream"):
        out += draw(_port_props(draft, info, props))
    elif info.bridge is not None:
        out += draw(_bridge_props(draft, info, props))
    if any(b.index == 6 for b in info.bars) and info.class_code >> 16 == 0x02 \
            and _has(props, info.driver, "romfile") and draw(st.booleans()):
        out.append(("romfile", ""))
    if _has(props, info.driver, "acpi-index") and draw(st.integers(0, 5)) == 0:
        index = draw(st.integers(1, 64))
        if index not in draft.acpi_indexes:
            draft.acpi_indexes.add(index)
            out.append(("acpi-index", index))
    disk = None
    if info.disk is not None and (info.needs_drive or draw(st.booleans())):
        disk = draw(st.sampled_from(DISK_SIZES))
    return out, disk


def _is_display(info: DriverInfo) -> bool:
    return info.class_code >> 16 == 0x03


@st.composite
def _add_device(draw: st.DrawFn, draft: _Draft, drivers: tuple[DriverInfo, ...],
                props: Props | None) -> None:
    """Draw one device (or a multifunction slot of several) onto the draft."""
    choices = [d for d in drivers if not (_is_display(d) and draft.displays)]
    # Bridges and endpoints alike often: a tree, not a flat row of endpoints.
    want_bridge = draw(st.booleans())
    pool = [d for d in choices if (d.bridge is not None) == want_bridge
            and _candidate_buses(draft, d)]
    if not pool:
        return
    info = draw(st.sampled_from(pool))
    candidates = _candidate_buses(draft, info)
    # Half the time the deepest bus: nesting 4 deep and more is then common.
    deepest = draw(st.booleans())
    bus = candidates[0] if deepest else candidates[draw(st.integers(0, len(candidates) - 1))]
    explicit = draw(st.booleans())
    free = _free_slots(draft, bus, explicit)
    if not free:
        return
    slot = free[draw(st.integers(0, len(free) - 1))] if explicit else free[0]
    functions = 1
    if explicit and draw(st.integers(0, 3)) == 0:
        functions = draw(st.integers(2, MAX_FUNCTIONS))
    draft.used.setdefault(bus.name, set()).add(slot)
    for fn in range(functions):
        if fn > 0:
            fn_choices = [d for d in choices if d.bridge is None and not _is_display(d)
                          and placement(device_role(d), bus.role, bus.express).allowed]
            if not fn_choices:
                break
            info = draw(st.sampled_from(fn_choices))
        dev_props, disk = draw(_device_props(draft, info, props))
        if functions > 1 and fn == 0:
            dev_props.insert(0, ("multifunction", "on"))
        dev_id = f"d{len(draft.devices) + 1}"
        addr = Address(slot, fn) if explicit else None
        draft.devices.append(Device(
            id=dev_id, driver=info.driver,
            bus=None if bus.role == "root" else bus.name, addr=addr,
            props=tuple(dev_props), disk=disk))
        draft.displays += _is_display(info)


@st.composite
def machines(draw: st.DrawFn, props: Props | None = None,
             max_devices: int = MAX_DEVICES,
             link_speeds: tuple[str, ...] | None = None) -> Topology:
    """A valid topology: machine type, ACPI bridge hotplug, 0-`max_devices` devices.

    `link_speeds`: the x-speed values this QEMU accepts (qemu/probe.py), all the
    model knows when None."""
    machine = draw(st.sampled_from(MACHINE_TYPES))
    acpi = draw(st.booleans())
    topology = Topology(machine=machine, memory=MACHINE_MEMORY, acpi_hotplug=acpi)
    assert topology.kind in MACHINES
    draft = _Draft(topology, [], {}, set(), set(), link_speeds)
    drivers = drawable_drivers(props)
    count = draw(st.integers(0, max_devices))
    for _ in range(count):
        draw(_add_device(draft, drivers, props))
    result = draft.current()
    validate(result)  # a strategy bug is a TopologyError here, never a QEMU run
    return result
