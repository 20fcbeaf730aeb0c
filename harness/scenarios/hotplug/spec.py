"""What a hot-plug is: the device asked for (PlugSpec), what came of it
(Plugged, Unplugged, DiskCheck) and the named ways it can fail.

Values and errors only; harness/scenarios/hotplug/plug.py's Hotplugger does the
plugging and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import DeadlineExceeded, HarnessError, UserError
from harness.qemu.drivers import driver_info
from harness.topology import Address, Device
from harness.topology.data import ExpectValue
from harness.topology.render import node_name

__all__ = [
    "DISK_BYTES",
    "BusNotHotpluggable",
    "DiskCheck",
    "HotplugError",
    "NotSeenByGuest",
    "PlugKind",
    "PlugRefused",
    "PlugSpec",
    "Plugged",
    "SlotOccupied",
    "UnknownDevice",
    "UnplugNotCompleted",
    "UnplugPending",
    "Unplugged",
    "kind_of",
]

PlugKind = Literal["disk", "nic", "bridge"]
DISK_BYTES = 4 * 1024 * 1024


class HotplugError(HarnessError):
    """A hot-plug or unplug request that cannot or did not work."""


class SlotOccupied(HotplugError, UserError):
    """The slot asked for already holds a function."""


class BusNotHotpluggable(HotplugError, UserError):
    """The bus has no hotplug handler (e.g. a pcie-root-port with hotplug=off)."""


class UnknownDevice(HotplugError, UserError):
    """device_del of an id QEMU does not know."""


class UnplugPending(HotplugError, UserError):
    """A second device_del while the first one has not completed."""


class PlugRefused(HotplugError):
    """QEMU refused device_add/blockdev-add/netdev_add; `desc` is QEMU's text."""

    def __init__(self, message: str, desc: str, **kw: str | None):
        super().__init__(message, **kw)
        self.desc = desc


class NotSeenByGuest(HotplugError, DeadlineExceeded):
    """QEMU accepted the device but the guest never bound a driver to it in time."""


class UnplugNotCompleted(HotplugError, DeadlineExceeded):
    """No DEVICE_DELETED for the id before the deadline."""


def kind_of(driver: str) -> PlugKind:
    """disk / nic / bridge from the drivers table (its disk role, class and bridge kind)."""
    info = driver_info(driver)
    if info is None:
        raise UserError(f"the harness does not know how to hot-plug {driver!r}",
                        fix="use virtio-blk-pci, virtio-net-pci, e1000, e1000e or pci-bridge")
    if info.bridge is not None:
        return "bridge"
    if info.disk == "self":
        return "disk"
    if info.class_code >> 16 == 0x02:
        return "nic"
    raise UserError(f"hot-plug of {driver!r} is not supported by this scenario",
                    fix="use a virtio-blk-pci disk, a NIC or a pci-bridge")


@dataclass(frozen=True)
class PlugSpec:
    """One device to hot-plug: `slot` on `bus` (function 0)."""

    id: str
    driver: str
    bus: str
    slot: int
    mac: str | None = None           # NICs: the MAC the guest must report
    chassis_nr: int | None = None    # pci-bridge
    disk_bytes: int = DISK_BYTES

    @property
    def kind(self) -> PlugKind:
        return kind_of(self.driver)

    def device(self) -> Device:
        """The topology Device this plug adds (the model's view of it)."""
        props: tuple[tuple[str, str | int | bool], ...] = ()
        expect: tuple[tuple[str, ExpectValue], ...] = ()
        if self.chassis_nr is not None:
            props = (("chassis_nr", self.chassis_nr),)
        if self.kind == "disk":  # plug.py adds the drive under the scratch disk's node name
            props = (("drive", node_name(self.id)),)
        if self.kind == "bridge":
            # The spec names no mechanism for a hot-added bridge's bus, only that
            # devices plugged behind it work (the cold-plug rule of expect.py, ACPI
            # BSEL, does not apply: no ACPI table describes a hot-added bridge).
            # The model leaves it open (None: not compared); the behaviour is
            # judged by test_device_behind_a_hot_added_bridge_is_seen, the one
            # place QEMU 7.2's gap (its own SHPC, never driven) is stated.
            expect = (("bus_hotplug", None),)
        return Device(id=self.id, driver=self.driver, bus=self.bus,
                      addr=Address(self.slot, 0), props=props, expect=expect)


@dataclass(frozen=True)
class Plugged:
    spec: PlugSpec
    path: tuple[str, ...]     # bridge-tree path of the new function (QEMU's view)
    guest_name: str           # "vdb", "eth2", or "" for a bridge
    mechanism: str            # the bus's hotplug mechanism (views.hotplug_mechanism)
    seconds: float            # device_add returned -> guest driver bound
    image: Path | None = None  # disks: the raw backing file


@dataclass(frozen=True)
class Unplugged:
    id: str
    mechanism: str
    seconds: float            # device_del -> DEVICE_DELETED (data.device == id)


@dataclass(frozen=True)
class DiskCheck:
    """Result of the data round trip on a hot-plugged disk."""

    read_ok: bool    # the guest read the host's seeded block 0 exactly
    write_ok: bool   # the guest re-read its own block 1 exactly (direct I/O)
    detail: str
