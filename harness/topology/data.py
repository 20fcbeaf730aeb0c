"""A topology as plain frozen data: the machine, its memory and its devices.

A topology says *what* to build; layout.py decides the addresses and chassis
numbers QEMU would otherwise pick itself, render.py turns it into arguments and
expect.py derives what the guest should see.  Nothing here knows QEMU flags.

Buses are named the QEMU way: the root bus is "pci.0" (pc) or "pcie.0" (q35) and
the bus a bridge or port creates carries the bridge's id, so `bus = "rp1"` puts a
device below the port "rp1".
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from harness.errors import TopologyError
from harness.qemu.facts import MachineKind, machine_type_version
from harness.qemu.machines import MACHINES, MachineFacts, known_machine_kind

ROOT_BUS: dict[MachineKind, str] = {kind: m.root_bus for kind, m in MACHINES.items()}
MGMT_ID = "mgmt"

PropValue = str | int | bool
# An `expect` override value: a scalar, or a list for `capabilities`.
ExpectValue = str | int | float | bool | None | tuple[str, ...]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_ADDR_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,2})(?:\.([0-7]))?$")


def machine_kind(machine: str) -> MachineKind:
    """"pc" or "q35" for a machine type name; TopologyError for anything else."""
    return known_machine_kind(machine, TopologyError)


def machine_version(machine: str) -> tuple[int, ...] | None:
    """(major, minor) of a versioned machine type, None for the unversioned alias."""
    return machine_type_version(machine)


def parse_size(value: str | int, *, what: str) -> int:
    """Bytes from 512M / 1G / 65536; binary units like qemu-img and -m."""
    if isinstance(value, bool):
        raise TopologyError(f"{what}: expected a size, got {value!r}",
                            fix='write a size such as "64M" or "1G"')
    if isinstance(value, int):
        if value <= 0:
            raise TopologyError(f"{what}: size must be positive, got {value}",
                                fix='write a size such as "64M"')
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise TopologyError(f"{what}: cannot read size {value!r}",
                            fix='write a size such as "512M", "64M" or "1G"')
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    size = int(m.group(1)) << shift
    if size <= 0:
        raise TopologyError(f"{what}: size must be positive", fix='write a size such as "64M"')
    return size


@dataclass(frozen=True, order=True)
class Address:
    """slot.function on one bus (devfn), written "02.0" like lspci."""

    slot: int
    function: int = 0

    @classmethod
    def parse(cls, text: str | int, *, what: str) -> Address:
        """Accept "2", "2.0", "0x1e", "1e.3" (slot in hex as QEMU reads it) or an int slot."""
        fix = ('write addr as "SLOT.FUNCTION" with SLOT 0-1f in hex and FUNCTION 0-7, '
               'for example addr = "2.0" or "1e.3"')
        if isinstance(text, bool):
            raise TopologyError(f"{what}: bad addr {text!r}", fix=fix)
        if isinstance(text, int):
            text = f"{text:x}"
        m = _ADDR_RE.match(text.strip())
        if not m or int(m.group(1), 16) > 0x1F:
            raise TopologyError(f"{what}: bad addr {text!r}", fix=fix)
        return cls(int(m.group(1), 16), int(m.group(2) or 0))

    def __str__(self) -> str:
        return f"{self.slot:02x}.{self.function}"

    def qemu(self) -> str:
        """The form -device addr= takes."""
        return f"0x{self.slot:x}.{self.function}"


@dataclass(frozen=True)
class Device:
    """One -device.  `props` are the remaining -device properties, in file order."""

    id: str
    driver: str
    bus: str | None = None  # None: the machine's root bus
    addr: Address | None = None  # None: layout.py picks the first free slot
    props: tuple[tuple[str, PropValue], ...] = ()
    disk: int | None = None  # bytes of a scratch disk, see render.py for its meaning
    expect: tuple[tuple[str, ExpectValue], ...] = ()

    def prop(self, name: str) -> PropValue | None:
        for key, value in self.props:
            if key == name:
                return value
        return None

    def flag(self, name: str) -> bool | None:
        """A boolean -device property as QEMU reads on/off/true/false, None when unset."""
        value = self.prop(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        return str(value).lower() in ("on", "true", "yes", "1")


@dataclass(frozen=True)
class BootDisk:
    """A disk the firmware boots from, read-only to the harness.

    Each guest gets its own qcow2 overlay over `image` (render.py names it, the
    launcher creates it), so booting never writes the image.  `controller` is
    the id of an `ich9-ahci` device of the topology, or None for the machine's
    built-in AHCI (q35 00:1f.2).
    """

    image: str
    format: str = "raw"
    controller: str | None = None


@dataclass(frozen=True)
class Topology:
    machine: str = "q35"
    memory: int = 512 * 1024 * 1024  # bytes
    devices: tuple[Device, ...] = ()
    ahci_disk: int | None = None  # q35 only: a disk on the built-in AHCI (00:1f.2) port 0
    # ACPI PCI hotplug of bridges (the machine default).  False turns it off with a
    # -global so that root ports use native PCIe hotplug and PCI bridges use SHPC.
    acpi_hotplug: bool = True
    boot_disk: BootDisk | None = None  # firmware boots this disk (no -kernel); see BootDisk
    source: str | None = field(default=None, compare=False)  # file it came from, for messages

    @property
    def kind(self) -> MachineKind:
        return machine_kind(self.machine)

    @property
    def facts(self) -> MachineFacts:
        """What this machine kind is built of (harness/qemu/facts.py)."""
        return MACHINES[self.kind]

    @property
    def root_bus(self) -> str:
        return self.facts.root_bus

    def device(self, device_id: str) -> Device:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    def bus_of(self, dev: Device) -> str:
        return dev.bus or self.root_bus

    def ancestors(self, device_id: str) -> tuple[Device, ...]:
        """The devices above `device_id`, nearest first: the bridge or port whose bus
        it sits on, that one's, ... (a bus is named after the device that makes it)."""
        by_id = {d.id: d for d in self.devices}
        out: list[Device] = []
        dev = by_id.get(device_id)
        while dev is not None and dev.bus in by_id and by_id[dev.bus] not in out:
            dev = by_id[dev.bus]
            out.append(dev)
        return tuple(out)

    def describe(self, dev: Device | None = None) -> str:
        """"device 'x' in FILE" for messages."""
        text = f"device {dev.id!r}" if dev is not None else "topology"
        return f"{text} in {self.source}" if self.source else text

    def cache_key(self) -> str:
        """A stable hash of everything that changes the machine QEMU builds.

        `expect` overrides and the source file name do not change the device set,
        so they do not change the key: a guest snapshot stays valid when only an
        expectation is edited.
        """
        data = {
            "v": 1,
            "machine": self.machine,
            "memory": self.memory,
            "ahci_disk": self.ahci_disk,
            "acpi_hotplug": self.acpi_hotplug,
            "devices": [[d.id, d.driver, d.bus, str(d.addr) if d.addr else None,
                         [[k, v] for k, v in d.props], d.disk] for d in self.devices],
        }
        if self.boot_disk is not None:  # only then: keys of other topologies stay as they were
            data["boot_disk"] = [self.boot_disk.image, self.boot_disk.format,
                                 self.boot_disk.controller]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
