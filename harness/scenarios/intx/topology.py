"""The INT#x routing model and the shared-line stress topology: pure data.

Where a device's INT#x lands is derived from the PCI specs, never read back
from QEMU: each PCI-to-PCI bridge swizzles pin' = ((pin - 1 + slot) mod 4) + 1
towards its primary bus, and the root bus maps (slot, pin) to a chipset PIRQ
link (the machine's table in harness/qemu/facts.py).  `shared_line_layout`
chooses every stress device's slot so that all of them land on ONE link,
whatever their bridge depth.  The stress itself: harness/scenarios/intx/stress.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from harness.errors import UserError
from harness.qemu.machines import machine_facts
from harness.topology.data import Address, Device, Topology
from harness.topology.placement import resolve
from harness.topology.rules import intx_slots
from harness.topology.tree import path_of

__all__ = [
    "DISK_BYTES",
    "LINK_NAMES",
    "IntxRoute",
    "StressDevice",
    "StressKind",
    "StressLayout",
    "expected_line",
    "intx_route",
    "root_link",
    "shared_line_layout",
    "swizzle",
]

StressKind = Literal["blk", "net"]
LINK_NAMES = "ABCDEFGH"
DISK_BYTES = 32 * 1024 * 1024
BRIDGE_DRIVER = "pci-bridge"


# --------------------------------------------------------------------------- routing model

def swizzle(pin: int, slot: int) -> int:
    """The PCI-to-PCI bridge rule: INT pin (1-4) of a device at `slot` on the
    secondary bus as it appears on the bridge's primary side."""
    return ((pin - 1 + slot) % 4) + 1


def root_link(machine: str, slot: int, pin: int) -> int:
    """PIRQ link index (0 = PIRQA) of root-bus `slot`, INT pin `pin` (1-4)."""
    facts = machine_facts(machine)
    if slot not in facts.pirq_slots:
        raise UserError(f"root slot {slot:#x}: ICH9 routes slots 0x18-0x1f through "
                        "per-device D<n>IR registers; the model covers slots below "
                        f"{facts.pirq_slots.stop:#x}")
    return (slot + facts.pirq_slot_offset + pin - 1) % 4 + facts.pirq_first_link


@dataclass(frozen=True)
class IntxRoute:
    """Where one device's INT#x goes: pin per level (device first) and the link."""

    device: str
    pins: tuple[int, ...]        # pin at the device, then after each bridge upward
    root_slot: int
    link: int                    # 0 = PIRQA

    @property
    def link_name(self) -> str:
        return f"PIRQ{LINK_NAMES[self.link]}"


def intx_route(topology: Topology, device_id: str, pin: int = 1) -> IntxRoute:
    """Swizzle `device_id`'s pin up its bridge chain and map it to a root link."""
    topo = resolve(topology)
    path = path_of(topo, topo.device(device_id))
    slots = [Address.parse(p, what=device_id).slot for p in path]
    pins = [pin]
    for slot in reversed(slots[1:]):
        pins.append(swizzle(pins[-1], slot))
    return IntxRoute(device_id, tuple(pins), slots[0], root_link(topo.machine, slots[0],
                                                                  pins[-1]))


def expected_line(machine: str, link: int) -> int | None:
    """The interrupt line (GSI) a PIRQ link drives in APIC mode, when the chipset
    fixes it: q35's ICH9 wires PIRQA-H to IO-APIC pins 16-23.

    None on pc: PIIX3 steers PIRQA-D to whichever ISA IRQ its PIRQRC register
    holds, and the guest's OS picks that IRQ among the link's _PRS choices and
    programs it through ACPI _SRS.  Reading the register back would compare the
    guest with itself, so IntxStress learns the line from the hardware side (the
    IO-APIC pin QEMU counts while one device does I/O) and checks it against
    the DSDT's _PRS for the link and against the guest's IRQ.
    """
    base = machine_facts(machine).pirq_gsi_base
    return None if base is None else base + link


# --------------------------------------------------------------------------- the topology

@dataclass(frozen=True)
class StressDevice:
    id: str
    kind: StressKind
    depth: int
    subnet: int | None = None     # net: 10.0.<subnet>.0/24 on its own user netdev

    @property
    def guest_ip(self) -> str:
        return f"10.0.{self.subnet}.15"

    @property
    def host_ip(self) -> str:
        return f"10.0.{self.subnet}.2"     # slirp's alias for the host's 127.0.0.1


@dataclass(frozen=True)
class StressLayout:
    """A topology whose stress devices all share one INT#x link, plus what the
    harness needs to drive them."""

    topology: Topology
    devices: tuple[StressDevice, ...]
    netdevs: tuple[str, ...]      # -netdev values of the stress NICs (LaunchPlan.netdevs)
    link: int

    def device(self, device_id: str) -> StressDevice:
        return next(d for d in self.devices if d.id == device_id)


def _free_slots(machine: str, depth: int, used: set[int]) -> list[int]:
    return [s for s in intx_slots(machine_facts(machine), depth) if s not in used]


def shared_line_layout(machine: str, depths: Sequence[int], *,
                       kinds: Sequence[StressKind] | None = None,
                       disk_bytes: int = DISK_BYTES) -> StressLayout:
    """Stress devices at the given bridge depths, all routed to one PIRQ link.

    A chain of pci-bridges ib1 (root slot 2) -> ib2 (slot 1) -> ... is as deep
    as the deepest device; a device at depth d sits on ib<d>'s bus (the root bus
    for 0) at the first free slot whose swizzled route reaches the link the
    first device got.  Kinds alternate blk, net unless given.
    """
    if not depths:
        raise UserError("an INT#x stress needs at least one device")
    if min(depths) < 0 or max(depths) > 8:
        raise UserError("bridge depth must be 0-8")
    kinds = list(kinds) if kinds is not None else [
        "blk" if i % 2 == 0 else "net" for i in range(len(depths))]
    devices: list[Device] = []
    for level in range(1, max(depths) + 1):
        devices.append(Device(id=f"ib{level}", driver=BRIDGE_DRIVER,
                              bus=None if level == 1 else f"ib{level - 1}",
                              addr=Address(2 if level == 1 else 1, 0)))
    used: dict[int, set[int]] = {d: {2 if d == 0 else 1} for d in range(max(depths) + 1)}
    stress: list[StressDevice] = []
    extra: list[str] = []
    link: int | None = None
    base = Topology(machine=machine, devices=tuple(devices))
    for index, (depth, kind) in enumerate(zip(depths, kinds)):
        dev_id = f"s{index}{kind}"
        subnet = 10 + index if kind == "net" else None
        props: list[tuple[str, str | int | bool]] = [("vectors", 0)]
        if kind == "net":
            props.append(("netdev", f"{dev_id}-nd"))
        for slot in _free_slots(machine, depth, used[depth]):
            candidate = Device(id=dev_id, driver="virtio-blk-pci" if kind == "blk"
                               else "virtio-net-pci", bus=f"ib{depth}" if depth else None,
                               addr=Address(slot, 0), props=tuple(props),
                               disk=disk_bytes if kind == "blk" else None)
            trial = replace(base, devices=base.devices + (candidate,))
            route = intx_route(trial, dev_id)
            if link is None or route.link == link:
                link = route.link
                base = trial
                used[depth].add(slot)
                break
        else:
            raise UserError(f"no free slot at depth {depth} reaches PIRQ{LINK_NAMES[link or 0]}",
                            fix="use fewer devices per depth")
        stress.append(StressDevice(dev_id, kind, depth, subnet))
        if subnet is not None:
            extra.append(f"user,id={dev_id}-nd,net=10.0.{subnet}.0/24")
    assert link is not None
    return StressLayout(base, tuple(stress), tuple(extra), link)
