"""Machine kinds: what `pc` and `q35` are made of, the same on every QEMU version.

Root bus, built-in slots, the ACPI hotplug device, INT#x routing.  Machine
differences are read from this table (`MACHINES`), never written as comparisons
of kind names.  What changes with the QEMU or machine-type version is a
`VersionedFact` in harness/qemu/facts.py; the built-in functions themselves are
rows of harness/qemu/drivers.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.errors import UserError
from harness.qemu.drivers import BUILTIN
from harness.qemu.facts import (
    Q35_ACPI_BRIDGE_HOTPLUG,
    MachineKind,
    Version,
    VersionedFact,
    machine_kind_of,
)

__all__ = ["MACHINES", "MGMT_SLOT", "MachineFacts", "known_machine_kind", "machine_facts"]


@dataclass(frozen=True)
class MachineFacts:
    """What a machine kind is built of, the same on every QEMU version we judge."""

    kind: MachineKind
    root_bus: str                    # the root bus's QEMU name
    express: bool                    # the root bus is PCI Express
    acpi_device: str                 # QOM type of the ACPI PM function (its hotplug handler)
    acpi_mechanism: str              # hotplug mechanism name of that handler
    bridge_acpi_global: str          # -global that turns ACPI hotplug behind bridges off
    #: ACPI bridge hotplug by machine type version (None: on in every type).
    bridge_acpi_default: VersionedFact[bool] | None
    #: INT#x routing of root-bus slots: PIRQ link = (slot + offset + pin - 1) % 4 +
    #: first_link, for the slots in `pirq_slots` (ICH9 routes 0x18-0x1f per device).
    pirq_slots: range
    pirq_slot_offset: int
    pirq_first_link: int
    #: The GSI of link 0 when the links are wired to fixed IO-APIC pins; None when
    #: the OS steers them through a config register (`pirq_steering`: function, offset).
    pirq_gsi_base: int | None
    pirq_steering: tuple[str, int] | None
    #: How the root bus is hot-plugged by design ("none": not at all).  What a
    #: binary really does is probed (probe.py); this is the spec side.
    root_hotplug: str
    #: The built-in AHCI's first bus (for `ahci_disk`), None when there is none.
    builtin_ahci_bus: str | None
    #: Hot-plug NIC drivers the stress scenario uses (a native PCIe NIC on q35).
    hotplug_nics: tuple[str, ...]
    root_ports: bool = field(default=False)  # pcie-root-port and friends have a home

    @property
    def builtin(self) -> Mapping[int, str]:
        """Root-bus slots the machine itself uses -> by what ("the PIIX3 ISA bridge,
        piix3-ide IDE, PIIX4_PM ACPI PM"), from the one table of built-in functions."""
        by_slot: dict[int, list[str]] = {}
        for (slot, _), info in sorted(BUILTIN[self.kind].items()):
            by_slot.setdefault(slot, []).append(f"{info.driver} {info.role}".strip())
        return {slot: "the " + ", ".join(names) for slot, names in by_slot.items()}

    def bridge_acpi(self, machine_type_version: Version | None, requested: bool) -> bool:
        """ACPI hotplug behind bridges, as the machine type and the topology set it."""
        if self.bridge_acpi_default is not None and machine_type_version is not None \
                and not self.bridge_acpi_default.at(machine_type_version):
            return False
        return requested


MGMT_SLOT = 0x1E  # the harness's own management NIC: the same slot on every machine

MACHINES: Mapping[MachineKind, MachineFacts] = {
    "pc": MachineFacts(
        kind="pc", root_bus="pci.0", express=False,
        acpi_device="PIIX4_PM", acpi_mechanism="acpi-bsel",
        bridge_acpi_global="PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
        bridge_acpi_default=None, pirq_slots=range(32), pirq_slot_offset=-1,
        pirq_first_link=0, pirq_gsi_base=None, pirq_steering=("00:01.0", 0x60),
        root_hotplug="acpi-bsel", builtin_ahci_bus=None,
        hotplug_nics=("e1000",)),
    "q35": MachineFacts(
        kind="q35", root_bus="pcie.0", express=True,
        acpi_device="ICH9-LPC", acpi_mechanism="acpi-pcihp",
        bridge_acpi_global="ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        bridge_acpi_default=Q35_ACPI_BRIDGE_HOTPLUG, pirq_slots=range(0x18),
        pirq_slot_offset=0, pirq_first_link=4, pirq_gsi_base=16, pirq_steering=None,
        root_hotplug="none",
        builtin_ahci_bus="ide.0", hotplug_nics=("e1000e",), root_ports=True),
}


def known_machine_kind(machine: str, error: type[UserError] = UserError) -> MachineKind:
    """"pc" / "q35" for a machine type name; `error` (a UserError, such as the
    topology's TopologyError) naming the accepted types for one the harness cannot build."""
    kind = machine_kind_of(machine)
    if kind is None:
        raise error(f"unknown machine type {machine!r}",
                    fix='use "pc", "q35" or a versioned type such as "pc-q35-7.2" '
                        'or "pc-i440fx-7.2"')
    return kind


def machine_facts(machine: str) -> MachineFacts:
    """The MachineFacts of a machine type name; UserError for one the harness cannot build."""
    return MACHINES[known_machine_kind(machine)]
