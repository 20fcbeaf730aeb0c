"""What the harness believes about QEMU: one home, keyed by version and machine type.

Three kinds of fact live here, and nowhere else decides what a QEMU does:

- Machine kinds (`MACHINES`, harness/qemu/machines.py): what `pc` and `q35`
  are made of whatever the version -- root bus, built-in slots, the ACPI
  hotplug device.  Machine differences are read from that table, not written as
  comparisons of kind names.
- Versioned facts (`VersionedFact`): a value with the version where it
  changed, keyed either by the QEMU binary's version (a refusal message) or by
  the versioned machine type (a compat property: the same 10.0 binary shows
  different config space for `pc-q35-7.2` and `pc-q35-10.0`).
- Probed facts (`ProbedFacts`, harness/qemu/probe.py): what the binary
  itself answers on a paused throwaway machine -- machine aliases, root port
  properties, whether `device_add` works on each kind of bus.  Where QEMU can
  tell, the probe wins over the table; the table is the fallback and the
  record of when a thing changed.

The device half of the same facts -- what each `-device` driver and each
machine's built-in functions look like to the guest (ids, BARs, capabilities,
guest modules) -- is the table in harness/qemu/drivers.py; `MachineFacts.builtin`
reads its built-in functions, so a built-in slot is written down once.

Every entry says how it was checked.  "measured" means on this project's two
reference binaries, 7.2.22 (Debian 12) and 10.0.2 (bookworm-backports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from harness.errors import UserError
from harness.qemu.drivers import BarSpec, CompatLayout

#: (major, minor) or (major, minor, micro): tuples compare as versions, and a
#: series (10, 0) sorts before every release of it ((10, 0, 0), (10, 0, 2)).
Version = tuple[int, ...]
T = TypeVar("T")
MachineKind = Literal["pc", "q35"]
KeyedBy = Literal["qemu", "machine"]

_KIND_OF_NAME: dict[str, MachineKind] = {"pc": "pc", "i440fx": "pc", "q35": "q35"}
_MACHINE_RE = re.compile(r"^(?:(pc|q35)|pc-(q35|i440fx)-(\d+)\.(\d+)(?:\.\d+)?)$")


def parse_version(text: str) -> Version:
    """(7, 2, 22) of "7.2.22", (10, 0) of "10.0" or "pc-q35-10.0"; UserError when there is none.

    The micro number is kept: 10.1.50 is a development build (see
    `is_development`), not 10.1, and compares between 10.1.x and 10.2.
    """
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise UserError(f"no QEMU version in {text!r}", fix='write a version such as "10.0.2"')
    major, minor = int(m.group(1)), int(m.group(2))
    return (major, minor) if m.group(3) is None else (major, minor, int(m.group(3)))


def show_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


#: QEMU's numbering: a micro of 50 or more is the development tree after a
#: release (10.1.50 is master after 10.1, on its way to 10.2; 9.2.50 to 10.0).
DEVELOPMENT_MICRO = 50


def is_development(version: Version) -> bool:
    return len(version) > 2 and version[2] >= DEVELOPMENT_MICRO


def next_release(version: Version) -> Version:
    """The release series after `version`'s: x.0 and x.1 are followed by x+0.1 and
    x.2, x.2 by x+1.0 (QEMU's three releases a year since 7.0)."""
    major, minor = version[0], version[1]
    return (major + 1, 0) if minor >= 2 else (major, minor + 1)


def changes_at_next_release(version: Version, since: Version | None) -> bool:
    """True when `version` is a development build and `since` (where a fact or a
    gap's range changes) lies after its release and no later than the next: the
    build may already carry the change, so the answer for it is inferred."""
    return (since is not None and is_development(version)
            and version[:2] < since <= next_release(version))


def machine_kind_of(machine: str) -> MachineKind | None:
    """"pc" / "q35" for a machine type name (alias or versioned), None when unknown."""
    m = _MACHINE_RE.match(machine)
    if not m:
        return None
    return _KIND_OF_NAME[m.group(1) or m.group(2)]


def machine_type_version(machine: str) -> Version | None:
    """(major, minor) of a versioned machine type; None for an alias such as "q35"."""
    m = _MACHINE_RE.match(machine)
    if not m or m.group(1):
        return None
    return int(m.group(3)), int(m.group(4))


# --------------------------------------------------------------------------- versioned facts

@dataclass(frozen=True)
class FactChange(Generic[T]):
    """From version `since` on (until the next change) the fact has `value`."""

    since: Version
    value: T
    evidence: str


@dataclass(frozen=True)
class VersionedFact(Generic[T]):
    name: str
    keyed_by: KeyedBy  # "qemu": the binary's version; "machine": the machine type's
    summary: str
    history: tuple[FactChange[T], ...]  # oldest first; the first has since (0, 0)
    #: What asks the binary itself instead (harness/qemu/probe.py); "" when only
    #: the table knows.  Where a probe answers, no version inference is needed.
    probed_by: str = ""

    def at(self, version: Version) -> T:
        """The value for a QEMU (or machine type) version."""
        value = self.history[0].value
        for change in self.history:
            if version >= change.since:
                value = change.value
        return value

    def latest(self) -> T:
        """The newest value: what an unversioned alias means on a current QEMU."""
        return self.history[-1].value

    def changed_in(self) -> Version | None:
        """The version of the latest change (None when it never changed)."""
        return self.history[-1].since if len(self.history) > 1 else None

    def differs(self, a: Version, b: Version) -> bool:
        return bool(self.at(a) != self.at(b))

    def inferred_for(self, version: Version) -> str | None:
        """Why the table's answer for `version` is inferred (None: it is not):
        a development build before a release where this fact changes."""
        change = next((c for c in self.history
                       if changes_at_next_release(version, c.since)), None)
        if change is None:
            return None
        where = (f"probed on the binary ({self.probed_by})" if self.probed_by
                 else "not probed: run the test that shows it")
        return (f"{self.name}: {show_version(version)} is a development build on its way to "
                f"{show_version(next_release(version))}, where this fact changes to "
                f"{change.value!r}; the table's answer {self.at(version)!r} is inferred "
                f"({where})")


_BASE: Version = (0, 0)
MEASURED = "measured on 7.2.22 and 10.0.2"

#: Native PCIe hotplug (pciehp) refusing a second device_del while the first is
#: pending.  Which text comes is timing, not version: qmp_device_del refuses in
#: the 5 s (virtual clock) pending window the first request opened; after it,
#: pcie.c refuses while the guest still blinks the power indicator.  Both texts
#: were seen on 10.0.2 (the issue's run: "guest is busy", this harness's runs:
#: "already in the process"); 7.2.22 gave "already in the process" in every run.
NATIVE_SECOND_UNPLUG_REFUSALS: VersionedFact[tuple[str, ...]] = VersionedFact(
    "native-second-unplug-refusals", "qemu",
    "QEMU's possible texts for a second device_del under native PCIe hotplug",
    (FactChange(_BASE, ("already in the process of unplug",
                    "guest is busy (power indicator blinking)"),
            "measured on 7.2.22 (first text) and 10.0.2 (both, by timing); both code "
            "paths exist in both versions"),))

#: A second device_del under SHPC once the guest took the first as a button
#: press (power indicator blinking): 7.2 passes it on, and shpchp takes it as a
#: second press that cancels the unplug; 8.0 refuses it ("shpc: disallow unplug
#: when power indicator is blinking", posted 2022-11-16, after 7.2's freeze).
SHPC_SECOND_UNPLUG_REFUSAL: VersionedFact[str | None] = VersionedFact(
    "shpc-second-unplug-refusal", "qemu",
    "QEMU's text refusing a second device_del under SHPC while the guest blinks (None: "
    "accepted, and the guest cancels the unplug)",
    (FactChange(_BASE, None, MEASURED + " (7.2.22: accepted, guest cancels)"),
     FactChange((8, 0), "guest is busy (power indicator blinking)",
            MEASURED + " (10.0.2); shpc.c blink check merged for 8.0")))

#: `file:` migration URIs (migrate / migrate-incoming).  Probed too.
FILE_MIGRATION_URI: VersionedFact[bool] = VersionedFact(
    "file-migration-uri", "qemu", "QEMU takes file:PATH as a migration URI",
    (FactChange(_BASE, False, MEASURED + ': 7.2.22 "unknown migration protocol"'),
     FactChange((8, 2), True, "8.2 added the file: transport; 10.0.2 accepts it (measured)")),
    probed_by="probe.py: migrate-incoming file: on a paused QEMU")

#: The pcie-root-port property that hides the native hotplug capability, and
#: whether `on` hides it (True) or exposes it (False).  Probed too.
NATIVE_HOTPLUG_PROPERTY: VersionedFact[tuple[str, bool]] = VersionedFact(
    "native-hotplug-property", "qemu",
    "pcie-root-port property controlling the native hotplug capability (name, on hides it)",
    (FactChange(_BASE, ("x-native-hotplug", False), MEASURED + " (device-list-properties)"),
     FactChange((8, 0), ("x-do-not-expose-native-hotplug-cap", True),
            "8.0 renamed and inverted it; 10.0.2 lists only the new name (measured)")),
    probed_by="probe.py: device-list-properties pcie-root-port")

#: x-speed values a pcie-root-port accepts.  Probed too (the property's description).
PORT_LINK_SPEEDS: VersionedFact[tuple[str, ...]] = VersionedFact(
    "port-link-speeds", "qemu", "x-speed values pcie-root-port accepts",
    (FactChange(_BASE, ("2_5", "5", "8", "16"), MEASURED + ' (description "2_5/5/8/16")'),
     FactChange((9, 0), ("2_5", "5", "8", "16", "32", "64"),
            "9.0 added 32 and 64 GT/s; 10.0.2 describes 2_5/5/8/16/32/64 (measured)")),
    probed_by="probe.py: x-speed's description")

#: QOM `hotplug-handler` of q35's pcie.0 with ACPI on.  Documentation of the
#: trap only: device_add is refused on both, so behaviour decides (probe.py).
Q35_ROOT_BUS_QOM_HANDLER: VersionedFact[str] = VersionedFact(
    "q35-root-bus-qom-handler", "qemu", "QOM hotplug-handler of q35's pcie.0 (ACPI on)",
    (FactChange(_BASE, "", MEASURED + " (7.2.22: none)"),
     FactChange((8, 0), "ICH9-LPC", MEASURED + " (10.0.2, also with pc-q35-7.2); release not "
            "pinned: 8.0 described non-hotpluggable root-bus devices in ACPI (acpi-index)")),
    probed_by="probe.py: the bus's hotplug-handler and a device_add")

#: QOM `hotplug-handler` of a `pcie-root-port,hotplug=off` bus with ACPI on.
HOTPLUG_OFF_PORT_QOM_HANDLER: VersionedFact[str] = VersionedFact(
    "hotplug-off-port-qom-handler", "qemu",
    "QOM hotplug-handler of a hotplug=off root port's bus (q35, ACPI on)",
    (FactChange(_BASE, "", MEASURED + " (7.2.22: none)"),
     FactChange((8, 0), "ICH9-LPC", MEASURED + " (10.0.2); release not pinned: 8.0 reworked "
            "the ACPI description of hotplug=off ports (PCNT)")),
    probed_by="probe.py: the bus's hotplug-handler and a device_add")

#: device_add refused on a hotplug=off root port when ACPI bridge hotplug is off.
HOTPLUG_OFF_PORT_REFUSAL: VersionedFact[str] = VersionedFact(
    "hotplug-off-port-refusal", "qemu",
    "QEMU's text refusing device_add on a hotplug=off port, ACPI bridge hotplug off",
    (FactChange(_BASE, "Hot-plug failed: unsupported by the port device '{bus}'",
            MEASURED + " (7.2.22)"),
     FactChange((8, 0), "Bus '{bus}' does not support hotplugging",
            MEASURED + " (10.0.2); release not pinned")),
    probed_by="probe.py: device_add on a hotplug=off port with ACPI off")

#: device_add refused on a hotplug=off root port with ACPI bridge hotplug on (q35's
#: default since pc-q35-6.1): ACPI PCI hotplug's own check, the same text since 7.2.
ACPI_HOTPLUG_OFF_PORT_REFUSAL: VersionedFact[str] = VersionedFact(
    "acpi-hotplug-off-port-refusal", "qemu",
    "QEMU's text refusing device_add on a hotplug=off port, ACPI bridge hotplug on",
    (FactChange(_BASE, "Bus '{bus}' does not support hotplugging",
                MEASURED + " (tests/pci/seed/test_q35_hotplug.py)"),))

# Compat properties: a function of the *machine type*, whatever the binary.
Q35_ACPI_BRIDGE_HOTPLUG: VersionedFact[bool] = VersionedFact(
    "q35-acpi-bridge-hotplug", "machine",
    "ICH9-LPC acpi-pci-hotplug-with-bridge-support defaults on (else native pciehp/SHPC)",
    (FactChange(_BASE, False, "pc-q35-6.0 uses native pciehp (measured on 7.2.22)"),
     FactChange((6, 1), True, "default since machine type 6.1")))

ROOT_PORT_DEFAULT_LINK: VersionedFact[tuple[float, int]] = VersionedFact(
    "root-port-default-link", "machine", "LnkCap of a pcie-root-port without x-speed/x-width",
    (FactChange(_BASE, (2.5, 1), "machine types before 4.0 keep the old 2.5 GT/s x1"),
     FactChange((4, 0), (16.0, 32), MEASURED + " with q35")))

#: MSI-X vectors of a virtio function left without `vectors=`, where a machine
#: type's compat property changed it (drivers not listed: the driver table).
#: Found by `pci-harness explore` (issue 25): the model said 4 / 2 on old types.
VIRTIO_DEFAULT_VECTORS: dict[str, VersionedFact[int]] = {
    "virtio-net-pci": VersionedFact(
        "virtio-net-default-vectors", "machine", "virtio-net-pci MSI-X table size",
        (FactChange(_BASE, 3, MEASURED + ": pc-i440fx-5.2 and pc-q35-5.2 show 3"),
         FactChange((6, 0), 4, MEASURED + ": pc-q35-6.0, pc-i440fx-6.0 and later show 4"))),
    "virtio-rng-pci": VersionedFact(
        "virtio-rng-default-vectors", "machine", "virtio-rng-pci MSI-X table size (0: none)",
        (FactChange(_BASE, 0, MEASURED + ": pc-i440fx-7.1, pc-q35-6.0 and older: no MSI-X"),
         FactChange((7, 2), 2, MEASURED + ": pc-q35-7.2 / pc-i440fx-7.2 and later: 2"))),
}

#: Drivers an older machine type builds otherwise (None: the table row holds).
#: nvme, measured on 7.2.22 and 10.0.2 (found by explore on 10.0.2): types before
#: 5.2 keep Intel's ids 8086:5845 (use-intel-id); types before 6.0 keep the MSI-X
#: table out of BAR 0 (BAR 0 8 KiB, the table in a 32-bit 4 KiB BAR 4).
_NVME_SPLIT_BARS = (BarSpec(0, "mem", 8 * 1024, is_64bit=True), BarSpec(4, "mem", 4096))
DRIVER_COMPAT: dict[str, tuple[VersionedFact[CompatLayout | None], ...]] = {
    "nvme": (
        VersionedFact("nvme-ids", "machine", "nvme's PCI ids",
                      (FactChange(_BASE, CompatLayout(vendor=0x8086, device=0x5845),
                                  MEASURED + ": pc-q35-5.1 shows 8086:5845"),
                       FactChange((5, 2), None, MEASURED + ": pc-q35-5.2 shows 1b36:0010"))),
        VersionedFact("nvme-msix-bar", "machine", "where nvme's MSI-X table lives",
                      (FactChange(_BASE, CompatLayout(bars=_NVME_SPLIT_BARS),
                                  MEASURED + ": pc-q35-5.2, pc-i440fx-5.2: BAR 0 8 KiB + BAR 4"),
                       FactChange((6, 0), None, MEASURED + ": pc-q35-6.0 on: BAR 0 16 KiB"))),
    ),
}

#: The harness boots its guest with -kernel vmlinux (an ELF, started through
#: PVH); machine types before 4.0 turn PVH off (compat), and QEMU then reads
#: the ELF as a bzImage: "linux kernel too old to load a ram disk" (measured
#: with pc-q35-3.1 on 7.2.22; found by explore).  Firmware boot (boot_disk)
#: needs no PVH.
KERNEL_BOOT_MIN_MACHINE: Version = (4, 0)

# A compat property listed in hw_compat_X_Y keeps the old behaviour for machine
# types up to X.Y, so the new one starts with the next type (measured for
# x-pcie-ext-tag: pc-q35-9.1 without, pc-q35-9.2 with).
_COMPAT = "not measured: hw_compat_{} lists {} (types up to it keep the old value)"

AER_UNCOR_MASK_WRITABLE: VersionedFact[bool] = VersionedFact(
    "aer-uncor-mask-writable", "machine", "AER Uncorrectable Error Mask is writable",
    (FactChange(_BASE, False, _COMPAT.format("8_0", "x-pcie-err-unc-mask=off")),
     FactChange((8, 1), True, "x-pcie-err-unc-mask defaults on (10.0.2 device-list-properties)")))

ARI_NEXTFN_1: VersionedFact[bool] = VersionedFact(
    "ari-nextfn-1", "machine", "ARI capability's Next Function is 1 (the old bug; 0 since)",
    (FactChange(_BASE, True, _COMPAT.format("8_0", "x-pcie-ari-nextfn-1=on")),
     FactChange((8, 1), False, "x-pcie-ari-nextfn-1 defaults off (10.0.2 device-list-properties)")))

SLOT_IMPLEMENTED_READ_ONLY: VersionedFact[bool] = VersionedFact(
    "slot-implemented-read-only", "machine", "PCIe Slot Implemented bit is read-only",
    (FactChange(_BASE, False, _COMPAT.format("8_1", "x-pci-express-writeable-slt-bug=on")),
     FactChange((8, 2), True, "x-pci-express-writeable-slt-bug defaults off (10.0.2)")))

VIRTIO_PM_NO_SOFT_RESET: VersionedFact[bool] = VersionedFact(
    "virtio-pm-no-soft-reset", "machine",
    "virtio-pci behind a port sets PMCSR No_Soft_Reset",
    (FactChange(_BASE, False, "measured on 10.0.2: clear for pc-q35-7.2, 8.0, 8.1, 9.0, 9.1, 9.2 "
            "and 10.0 (x-pcie-pm-no-soft-reset defaults off); the facts note's '9.0' is "
            "the property's introduction, not a guest-visible change"),))

DEVCAP_EXT_TAG: VersionedFact[bool] = VersionedFact(
    "devcap-ext-tag", "machine", "PCIe DevCap Extended Tag Field Supported",
    (FactChange(_BASE, False, "measured on 10.0.2: clear for pc-q35-7.2 to pc-q35-9.1"),
     FactChange((9, 2), True, "measured on 10.0.2: set for pc-q35-9.2 and pc-q35-10.0 "
            "(x-pcie-ext-tag, hw_compat_9_1)")))

VERSIONED_FACTS: tuple[VersionedFact[object], ...] = (  # type: ignore[assignment]
    NATIVE_SECOND_UNPLUG_REFUSALS, SHPC_SECOND_UNPLUG_REFUSAL, FILE_MIGRATION_URI, NATIVE_HOTPLUG_PROPERTY, PORT_LINK_SPEEDS,
    Q35_ROOT_BUS_QOM_HANDLER, HOTPLUG_OFF_PORT_QOM_HANDLER, HOTPLUG_OFF_PORT_REFUSAL,
    ACPI_HOTPLUG_OFF_PORT_REFUSAL,
    Q35_ACPI_BRIDGE_HOTPLUG, ROOT_PORT_DEFAULT_LINK, AER_UNCOR_MASK_WRITABLE, ARI_NEXTFN_1,
    SLOT_IMPLEMENTED_READ_ONLY, VIRTIO_PM_NO_SOFT_RESET, DEVCAP_EXT_TAG,
    VIRTIO_DEFAULT_VECTORS["virtio-net-pci"], VIRTIO_DEFAULT_VECTORS["virtio-rng-pci"],
    DRIVER_COMPAT["nvme"][0], DRIVER_COMPAT["nvme"][1])


def machine_fact(fact: VersionedFact[T], machine: str, qemu: Version) -> T:
    """A machine-type fact for `machine`; an alias means the binary's newest type,
    whose version is the binary's own (pin aliases first where you can)."""
    if fact.keyed_by != "machine":
        raise ValueError(f"{fact.name} is keyed by the QEMU version, not the machine type")
    return fact.at(machine_type_version(machine) or qemu)


def development_notes(version: Version) -> list[str]:
    """For a development build, every version-keyed fact whose answer for it is
    inferred (it changes at the next release); [] for a release."""
    return [note for fact in VERSIONED_FACTS if fact.keyed_by == "qemu"
            for note in [fact.inferred_for(version)] if note is not None]
