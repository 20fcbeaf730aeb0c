"""A function's MSI and MSI-X state as the guest's config space and BARs hold it.

What a migration or a hotplug must keep: whether MSI or MSI-X is enabled, how
many vectors, and each vector's address and data as the guest programmed them.
Read from the guest (config space through sysfs, the MSI-X table through
/dev/mem at the BAR address the guest assigned), so it is what the device
really holds, not what QEMU or the guest kernel believe.  The table read needs
the guest booted with kernel_args=("iomem=relaxed",): Debian's kernel has
IO_STRICT_DEVMEM, which refuses /dev/mem inside a BAR a driver claimed.

Layouts (PCI Local Bus 3.0, 6.8): MSI capability 0x05: control at +2 (bit 0
enable, bits 4-6 multiple message enable = log2 vectors, bit 7 64-bit), address
at +4 (+8 high when 64-bit), data after it.  MSI-X capability 0x11: control at
+2 (bits 0-10 table size - 1, bit 14 function mask, bit 15 enable), table
offset/BIR at +4; each table entry is 16 bytes: address low, high, data, vector
control (bit 0 masked).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from harness.guest.functions import GuestFunction, bar_address, devmem_read, read_file
from harness.protocols import Shell

__all__ = ["MsiState", "MsixEntry", "MsixState", "capability_offsets", "interrupt_differences",
           "msi_state", "msix_state", "parse_msi"]

MSI_CAP = 0x05
MSIX_CAP = 0x11


@dataclass(frozen=True)
class MsiState:
    enabled: bool
    vectors: int          # enabled vectors (1 << multiple message enable)
    address: int
    data: int


@dataclass(frozen=True)
class MsixEntry:
    address: int
    data: int
    masked: bool


@dataclass(frozen=True)
class MsixState:
    enabled: bool
    function_masked: bool
    table_size: int
    entries: tuple[MsixEntry, ...]


def _u16(config: bytes, offset: int) -> int:
    return int.from_bytes(config[offset:offset + 2], "little")


def _u32(config: bytes, offset: int) -> int:
    return int.from_bytes(config[offset:offset + 4], "little")


def capability_offsets(config: bytes) -> dict[int, int]:
    """{capability id: offset} of the standard capability list (first of each id)."""
    out: dict[int, int] = {}
    if len(config) < 0x40 or not _u16(config, 0x06) & 0x10:  # status: capability list
        return out
    offset, seen = config[0x34] & 0xFC, set()
    while offset and offset not in seen and offset + 1 < len(config):
        seen.add(offset)
        out.setdefault(config[offset], offset)
        offset = config[offset + 1] & 0xFC
    return out


def parse_msi(config: bytes) -> MsiState | None:
    """The MSI capability's state from config bytes, None without one."""
    cap = capability_offsets(config).get(MSI_CAP)
    if cap is None:
        return None
    control = _u16(config, cap + 2)
    is_64 = bool(control & 0x80)
    address = _u32(config, cap + 4)
    if is_64:
        address |= _u32(config, cap + 8) << 32
    data = _u16(config, cap + (12 if is_64 else 8))
    return MsiState(enabled=bool(control & 1), vectors=1 << ((control >> 4) & 7),
                    address=address, data=data)


def _config(shell: Shell, fn: GuestFunction) -> bytes:
    # As root the whole 256 bytes (a non-root read stops at 64).
    return read_file(shell, f"/sys/bus/pci/devices/{fn.bdf}/config")[:256]


def msi_state(shell: Shell, fn: GuestFunction) -> MsiState | None:
    return parse_msi(_config(shell, fn))


def msix_state(shell: Shell, fn: GuestFunction) -> MsixState | None:
    """MSI-X control and every table entry, read at the table's guest-physical address."""
    config = _config(shell, fn)
    cap = capability_offsets(config).get(MSIX_CAP)
    if cap is None:
        return None
    control = _u16(config, cap + 2)
    size = (control & 0x7FF) + 1
    table = _u32(config, cap + 4)
    start, bar_size = bar_address(shell, fn, table & 7)
    if not start:
        raise HarnessError(f"{fn.bdf}: the MSI-X table's BAR {table & 7} is not assigned "
                           f"(size {bar_size:#x})")
    base = start + (table & ~7)
    entries = []
    for i in range(size):
        at = base + 16 * i
        low, high = devmem_read(shell, at), devmem_read(shell, at + 4)
        entries.append(MsixEntry(address=low | high << 32, data=devmem_read(shell, at + 8),
                                 masked=bool(devmem_read(shell, at + 12) & 1)))
    return MsixState(enabled=bool(control & 0x8000), function_masked=bool(control & 0x4000),
                     table_size=size, entries=tuple(entries))


def interrupt_differences(before: tuple[MsixState | None, MsiState | None],
                          after: tuple[MsixState | None, MsiState | None]) -> list[str]:
    """What differs between two (MSI-X, MSI) readings, one line per field: "was -> is"."""
    out: list[str] = []
    for name, old, new in (("MSI-X", before[0], after[0]), ("MSI", before[1], after[1])):
        if old is None or new is None:
            if old != new:
                out.append(f"{name}: {old} -> {new}")
            continue
        for field in ("enabled", "function_masked", "table_size", "vectors", "address", "data"):
            if hasattr(old, field) and getattr(old, field) != getattr(new, field):
                out.append(f"{name} {field}: {getattr(old, field)!r} -> {getattr(new, field)!r}")
        if isinstance(old, MsixState) and isinstance(new, MsixState):
            for i, (a, b) in enumerate(zip(old.entries, new.entries)):
                if a != b:
                    out.append(f"MSI-X entry {i}: address {a.address:#x} data {a.data:#x} "
                               f"masked {a.masked} -> address {b.address:#x} data {b.data:#x} "
                               f"masked {b.masked}")
    return out
