"""What the harness knows about each QEMU -device driver it models.

One table, so that validation (load/layout), rendering (guest modules, disks,
chassis numbers) and the model of what the guest should see (expect) all read
the same facts.  Every entry was checked against QEMU 7.2 by reading the real
config space (tests/unit/data/*.json hold those recordings); see expect.py for
the rules that combine an entry with the device's place in the tree.

A driver missing from the table is still rendered verbatim and compared where
the views agree, but the model knows nothing about it (its fields stay None)
and it cannot be used as a bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BridgeKind = Literal["root-port", "upstream", "downstream", "pcie-pci-bridge", "pci-bridge",
                     "dmi-bridge"]
# "never": conventional PCI function, no PCIe capability anywhere.
# "always": a PCI Express function wherever it sits (e1000e even on `pc`).
# "express-bus": gains a PCIe capability on any PCIe bus (integrated endpoint on pcie.0).
# "behind-port": virtio: PCIe (and modern-only) only below a PCIe port, not on pcie.0.
PcieMode = Literal["never", "always", "express-bus", "behind-port"]
DiskRole = Literal["self", "ide", "scsi"]


@dataclass(frozen=True)
class BarSpec:
    """One BAR as QEMU builds it: index 0-5, or 6 for the expansion ROM."""

    index: int
    kind: Literal["io", "mem"]
    size: int
    is_64bit: bool = False
    prefetch: bool = False


@dataclass(frozen=True)
class PropertyQuirk:
    """A -device property value that removes parts of the function QEMU builds.

    Measured on QEMU 7.2 and 10.0 (config space): `vectors=0` leaves a virtio
    device without MSI-X and without the BAR its table lives in; `shpc=off` drops
    a bridge's SHPC capability with its register BAR; an empty `romfile` drops the
    expansion ROM.  `value` "off"/"on" matches a boolean property however it is
    spelled (off/false/no/0).
    """

    name: str
    prop: str
    value: str
    drops_capability: str | None = None
    drops_bars: tuple[int, ...] = ()
    also_drops: tuple[str, ...] = ()   # more capabilities that go with it
    drops_interrupt_pin: bool = False  # the function then raises no INTx


@dataclass(frozen=True)
class CompatLayout:
    """What an older machine type's compat properties make of a driver instead of
    its table row (qemu/facts.DRIVER_COMPAT says for which types): other ids,
    other BARs.  None keeps the row's value."""

    vendor: int | None = None
    device: int | None = None
    bars: tuple[BarSpec, ...] | None = None


#: Every driver with an expansion ROM (BAR 6) loses it with `romfile=`.
NO_ROM = PropertyQuirk("no option ROM", "romfile", "", drops_bars=(6,))
#: virtio: no MSI-X vectors, so no MSI-X capability and no BAR 1 for its table.
NO_VECTORS = PropertyQuirk("no MSI-X vectors", "vectors", "0", drops_capability="msix",
                           drops_bars=(1,))
#: SHPC bridges: the SHPC capability and its 256-byte register block in BAR 0;
#: pci-bridge then also has no MSI ("not applicable without SHPC") and
#: interrupt pin 0 (found by explore; 7.2.22 and 10.0.2, pc and q35).
NO_SHPC = PropertyQuirk("no SHPC", "shpc", "off", drops_capability="shpc", drops_bars=(0,),
                        also_drops=("msi",), drops_interrupt_pin=True)


@dataclass(frozen=True)
class DriverInfo:
    driver: str
    vendor: int
    device: int
    class_code: int  # 24 bit: base class, subclass, prog-if
    subsystem_vendor: int
    subsystem: int
    interrupt_pin: int  # 0 none, 1 INTA#
    bars: tuple[BarSpec, ...] = ()
    capabilities: tuple[str, ...] = ()  # names as in configspace.CAP_NAMES
    pcie: PcieMode = "never"
    pcie_type: str | None = None  # the PCIe port type when pcie != "never"
    #: On an express root bus (pcie.0) the function is a Root Complex integrated
    #: endpoint (QEMU's pcie_endpoint_cap_init), else `pcie_type`.
    integrated_on_root: bool = False
    msix_table_size: int | None = None
    bridge: BridgeKind | None = None
    modules: tuple[str, ...] = ()  # Debian 6.1 modules the guest loads for it
    guest_driver: str | None = None  # the name under /sys/bus/pci/drivers, if predictable
    disk: DiskRole | None = None  # what `disk = SIZE` means for this driver
    virtio_type: int | None = None
    legacy_io_size: int | None = None  # virtio: size of the transitional I/O BAR0
    role: str = ""  # a machine's built-in function: what it is ("host bridge")
    #: Properties QEMU requires that the topology need not spell out, rendered unless the
    #: device sets them: (name, value), "{id}" in a value becomes the device's id.
    default_props: tuple[tuple[str, str], ...] = ()
    quirks: tuple[PropertyQuirk, ...] = ()  # property values that remove parts (NO_ROM added
                                            # for every driver with a ROM BAR)
    # A port's LnkCap (speed GT/s, width) when fixed: the port has no x-speed /
    # x-width properties, so the machine type's default does not apply.
    link: tuple[float, int] | None = None
    # QEMU refuses the device without a drive= (virtio-blk-pci: "drive property not
    # set", 7.2.22 and 10.0.2; found by explore).
    needs_drive: bool = False

    def property_quirks(self) -> tuple[PropertyQuirk, ...]:
        has_rom = any(bar.index == 6 for bar in self.bars)
        return self.quirks + ((NO_ROM,) if has_rom and NO_ROM not in self.quirks else ())


# QEMU's default subsystem for its own functions (PCI_SUBVENDOR_ID_REDHAT_QUMRANET,
# PCI_SUBDEVICE_ID_QEMU); bridges leave the header-type-1 subsystem at 0.
QEMU_SUBSYS = (0x1AF4, 0x1100)
_ROM_256K = BarSpec(6, "mem", 256 * 1024)


def _virtio(driver: str, vtype: int, io_size: int, class_code: int, modules: tuple[str, ...],
            *, disk: DiskRole | None = None, msix: int | None = None,
            rom: bool = False, needs_drive: bool = False) -> DriverInfo:
    # Transitional ids 0x1000 + n; expect.py switches to 0x1040 + type behind a port.
    # Subsystem = virtio type when transitional (legacy drivers match on it).
    bars = (BarSpec(6, "mem", 256 * 1024),) if rom else ()
    return DriverInfo(driver, 0x1AF4, 0, class_code, 0x1AF4, vtype, 1, bars=bars,
                      capabilities=("msix", "vendor"), pcie="behind-port", pcie_type="endpoint",
                      msix_table_size=msix, modules=("virtio_pci",) + modules,
                      guest_driver="virtio-pci", disk=disk, virtio_type=vtype,
                      legacy_io_size=io_size, quirks=(NO_VECTORS,), needs_drive=needs_drive)


_TABLE = (
    # virtio: MSI-X table size for blk and scsi follows the vCPU count (one queue per
    # vCPU), which the topology does not fix, so it is None unless `vectors` is set.
    _virtio("virtio-blk-pci", 2, 128, 0x010000, ("virtio_blk",), disk="self",
            needs_drive=True),
    _virtio("virtio-net-pci", 1, 32, 0x020000, ("virtio_net",), msix=4, rom=True),
    _virtio("virtio-scsi-pci", 8, 64, 0x010000, ("virtio_scsi", "sd_mod"), disk="scsi"),
    _virtio("virtio-rng-pci", 4, 32, 0x00FF00, ("virtio_rng",), msix=2),
    DriverInfo("e1000", 0x8086, 0x100E, 0x020000, *QEMU_SUBSYS, 1,
               bars=(BarSpec(0, "mem", 128 * 1024), BarSpec(1, "io", 64), _ROM_256K),
               modules=("e1000",), guest_driver="e1000"),
    DriverInfo("e1000e", 0x8086, 0x10D3, 0x020000, 0x8086, 0x0000, 1,
               bars=(BarSpec(0, "mem", 128 * 1024), BarSpec(1, "mem", 128 * 1024),
                     BarSpec(2, "io", 32), BarSpec(3, "mem", 16 * 1024), _ROM_256K),
               capabilities=("pm", "msi", "msix"), pcie="always", pcie_type="endpoint",
               # on pcie.0 a root complex integrated endpoint (found by explore; 7.2.22
               # and 10.0.2; on pc's conventional root bus it stays an endpoint)
               integrated_on_root=True,
               msix_table_size=5, modules=("e1000e",), guest_driver="e1000e"),
    DriverInfo("ich9-ahci", 0x8086, 0x2922, 0x010601, *QEMU_SUBSYS, 1,
               bars=(BarSpec(4, "io", 32), BarSpec(5, "mem", 4096)),
               capabilities=("msi", "sata"), modules=("ahci", "sd_mod"), guest_driver="ahci",
               disk="ide"),
    # NVMe (QEMU's nvme, 1b36:0010): a PCI Express endpoint wherever it sits; the
    # namespace is the disk itself (drive=), and QEMU refuses it without a serial.
    DriverInfo("nvme", 0x1B36, 0x0010, 0x010802, *QEMU_SUBSYS, 1,
               bars=(BarSpec(0, "mem", 16 * 1024, is_64bit=True),),
               capabilities=("pm", "msix"), pcie="always", pcie_type="endpoint",
               integrated_on_root=True, msix_table_size=65, modules=("nvme",), guest_driver="nvme", disk="self",
               default_props=(("serial", "{id}"),)),
    # The std VGA: the same ids as bochs-display but class VGA, no capabilities
    # (not even on pcie.0), a 64 KiB ROM (vgabios-stdvga.bin); bochs-drm drives it.
    DriverInfo("VGA", 0x1234, 0x1111, 0x030000, *QEMU_SUBSYS, 0,
               bars=(BarSpec(0, "mem", 16 * 1024 * 1024, prefetch=True), BarSpec(2, "mem", 4096),
                     BarSpec(6, "mem", 64 * 1024)),
               modules=("bochs",), guest_driver="bochs-drm"),
    DriverInfo("bochs-display", 0x1234, 0x1111, 0x038000, *QEMU_SUBSYS, 0,
               bars=(BarSpec(0, "mem", 16 * 1024 * 1024, prefetch=True), BarSpec(2, "mem", 4096),
                     BarSpec(6, "mem", 32 * 1024)),
               pcie="express-bus", pcie_type="endpoint", integrated_on_root=True,
               modules=("bochs",),
               guest_driver="bochs-drm"),
    # Bridges.  Root and downstream ports bind the built-in `pcieport` driver.
    # The SSVID capability of a root port says 1b36:0000 (query-pci shows no subsystem
    # for bridges, the config space does).
    DriverInfo("pcie-root-port", 0x1B36, 0x000C, 0x060400, 0x1B36, 0, 1,
               bars=(BarSpec(0, "mem", 4096),), capabilities=("msix", "ssvid"),
               pcie="always", pcie_type="root-port", msix_table_size=1, bridge="root-port",
               guest_driver="pcieport"),
    # ioh3420: SSVID 8086:0000 and a fixed 2.5 GT/s x1 link (no x-speed/x-width);
    # found by `explore`, measured on 7.2.22 and 10.0.2.
    DriverInfo("ioh3420", 0x8086, 0x3420, 0x060400, 0x8086, 0, 1, capabilities=("msi", "ssvid"),
               pcie="always", pcie_type="root-port", bridge="root-port",
               guest_driver="pcieport", link=(2.5, 1)),
    DriverInfo("x3130-upstream", 0x104C, 0x8232, 0x060400, 0, 0, 0,
               capabilities=("msi", "ssvid"), pcie="always", pcie_type="upstream",
               bridge="upstream", guest_driver="pcieport"),
    DriverInfo("xio3130-downstream", 0x104C, 0x8233, 0x060400, 0, 0, 0,
               capabilities=("msi", "ssvid"), pcie="always", pcie_type="downstream",
               bridge="downstream", guest_driver="pcieport"),
    # SHPC bridges: BAR0 is the 256-byte SHPC register block (64-bit, not prefetchable).
    DriverInfo("pcie-pci-bridge", 0x1B36, 0x000E, 0x060400, 0, 0, 1,
               bars=(BarSpec(0, "mem", 256, is_64bit=True),), capabilities=("msi", "pm", "shpc"),
               pcie="always", pcie_type="pcie-pci-bridge", bridge="pcie-pci-bridge",
               quirks=(NO_SHPC,)),
    DriverInfo("pci-bridge", 0x1B36, 0x0001, 0x060400, 0, 0, 1,
               bars=(BarSpec(0, "mem", 256, is_64bit=True),),
               capabilities=("msi", "slotid", "shpc"), bridge="pci-bridge", quirks=(NO_SHPC,)),
    # prog-if 01 (subtractive decode) although QEMU forwards only inside its windows.
    DriverInfo("i82801b11-bridge", 0x8086, 0x244E, 0x060401, 0, 0, 0, capabilities=("ssvid",),
               bridge="dmi-bridge"),
)

def driver_table(rows: tuple[DriverInfo, ...]) -> dict[str, DriverInfo]:
    """{driver: row}; a second row for one driver is an error, never a silent override."""
    table: dict[str, DriverInfo] = {}
    for row in rows:
        if row.driver in table:
            raise ValueError(f"the driver table has two rows for {row.driver!r}: keep one")
        table[row.driver] = row
    return table


DRIVERS: dict[str, DriverInfo] = driver_table(_TABLE)


def driver_info(driver: str) -> DriverInfo | None:
    """The table entry for DRIVER, or None for a driver the model does not know."""
    return DRIVERS.get(driver)


# Built-in functions of each machine with -nodefaults: (slot, function) -> entry.
# Checked against query-pci and the config space of QEMU 7.2.
_PC_BUILTIN = {
    (0, 0): DriverInfo("i440FX", 0x8086, 0x1237, 0x060000, *QEMU_SUBSYS, 0, role="host bridge"),
    (1, 0): DriverInfo("PIIX3", 0x8086, 0x7000, 0x060100, *QEMU_SUBSYS, 0, role="ISA bridge"),
    (1, 1): DriverInfo("piix3-ide", 0x8086, 0x7010, 0x010180, *QEMU_SUBSYS, 0,
                       bars=(BarSpec(4, "io", 16),), role="IDE"),
    (1, 3): DriverInfo("PIIX4_PM", 0x8086, 0x7113, 0x068000, *QEMU_SUBSYS, 1, role="ACPI PM"),
}
_Q35_BUILTIN = {
    (0, 0): DriverInfo("mch", 0x8086, 0x29C0, 0x060000, *QEMU_SUBSYS, 0, role="host bridge"),
    (0x1F, 0): DriverInfo("ICH9-LPC", 0x8086, 0x2918, 0x060100, *QEMU_SUBSYS, 0, role="LPC"),
    (0x1F, 2): DriverInfo("ich9-ahci", 0x8086, 0x2922, 0x010601, *QEMU_SUBSYS, 1,
                          bars=(BarSpec(4, "io", 32), BarSpec(5, "mem", 4096)),
                          capabilities=("msi", "sata"), guest_driver="ahci", role="AHCI"),
    (0x1F, 3): DriverInfo("ICH9-SMB", 0x8086, 0x2930, 0x0C0500, *QEMU_SUBSYS, 1,
                          bars=(BarSpec(4, "io", 64),), role="SMBus"),
}
BUILTIN: dict[str, dict[tuple[int, int], DriverInfo]] = {"pc": _PC_BUILTIN, "q35": _Q35_BUILTIN}

# Modules every guest loads whatever the topology: the firmware config interface and
# the management NIC (virtio-net).
BASE_MODULES = ("qemu_fw_cfg", "virtio_pci", "virtio_net")
