"""Decode a PCI function's configuration space bytes.

The guest view reads /sys/bus/pci/devices/*/config because it is the one source
every kernel and every busybox can print, and it holds the same registers QEMU
emulates; parsing capabilities here (instead of trusting lspci's text) keeps the
guest view independent of the pciutils version.  Pure functions, no I/O: the
development tools decode QEMU's own config space (read through MMCONFIG or port
0xcf8) with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.views.pciview import PciFunction, window

CAP_NAMES = {
    0x01: "pm", 0x02: "agp", 0x03: "vpd", 0x04: "slotid", 0x05: "msi", 0x06: "hotswap",
    0x07: "pcix", 0x08: "ht", 0x09: "vendor", 0x0A: "debug", 0x0B: "cpci", 0x0C: "shpc",
    0x0D: "ssvid", 0x0E: "agp3", 0x0F: "secure", 0x10: "pcie", 0x11: "msix", 0x12: "sata",
    0x13: "af", 0x14: "ea",
}
PCIE_TYPES = {
    0: "endpoint", 1: "legacy-endpoint", 4: "root-port", 5: "upstream", 6: "downstream",
    7: "pcie-pci-bridge", 8: "pci-pcie-bridge", 9: "rc-endpoint", 10: "rc-event-collector",
}
LINK_SPEEDS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}
_NO_LINK = (9, 10)  # root-complex integrated functions have no link registers


@dataclass(frozen=True)
class ConfigFacts:
    """What the first 256 bytes of config space say; None where they cannot tell."""

    vendor: int
    device: int
    class_code: int  # base << 8 | sub
    prog_if: int
    header_type: int
    interrupt_pin: int
    interrupt_line: int
    subsystem_vendor: int | None = None
    subsystem: int | None = None
    capabilities: tuple[str, ...] | None = None  # None: config was cut short (not root)
    msix_table_size: int | None = None
    pcie_type: str | None = None
    link_cap_speed: float | None = None
    link_cap_width: int | None = None
    link_speed: float | None = None
    link_width: int | None = None
    slot_hotplug_capable: bool | None = None
    secondary_bus: int | None = None
    subordinate_bus: int | None = None
    io_window: str | None = None
    mem_window: str | None = None
    pref_window: str | None = None


def _u16(cfg: bytes, off: int) -> int:
    return int.from_bytes(cfg[off:off + 2], "little")


def _u32(cfg: bytes, off: int) -> int:
    return int.from_bytes(cfg[off:off + 4], "little")


def cap_offsets(cfg: bytes) -> list[tuple[int, int]]:
    """(offset, id) of each standard capability, following the list from 0x34."""
    if len(cfg) < 0x40 or not _u16(cfg, 0x06) & 0x10:
        return []
    out: list[tuple[int, int]] = []
    pos = cfg[0x34] & 0xFC
    while pos >= 0x40 and pos + 1 < len(cfg) and len(out) < 48:  # 48: loop guard
        out.append((pos, cfg[pos]))
        pos = cfg[pos + 1] & 0xFC
    return out


def decode(cfg: bytes) -> ConfigFacts:
    """Decode header and capabilities; `cfg` is at least the 64-byte header."""
    if len(cfg) < 0x40:
        raise ValueError(f"config space too short: {len(cfg)} bytes")
    header = cfg[0x0E] & 0x7F
    facts: dict[str, object] = {}
    if header == 0:
        facts.update(subsystem_vendor=_u16(cfg, 0x2C), subsystem=_u16(cfg, 0x2E))
    elif header == 1:
        facts.update(secondary_bus=cfg[0x19], subordinate_bus=cfg[0x1A], **_windows(cfg))
    if len(cfg) >= 256:
        caps = cap_offsets(cfg)
        facts["capabilities"] = tuple(sorted({CAP_NAMES.get(c, f"cap-{c:#04x}")
                                              for _, c in caps}))
        facts["pcie_type"] = ""
        for pos, cap in caps:
            if cap == 0x11:
                facts["msix_table_size"] = (_u16(cfg, pos + 2) & 0x7FF) + 1
            elif cap == 0x0D and header == 1:
                facts.update(subsystem_vendor=_u16(cfg, pos + 4), subsystem=_u16(cfg, pos + 6))
            elif cap == 0x10:
                facts.update(_pcie(cfg, pos))
    return ConfigFacts(
        vendor=_u16(cfg, 0), device=_u16(cfg, 2), class_code=_u16(cfg, 0x0A),
        prog_if=cfg[0x09], header_type=header, interrupt_pin=cfg[0x3D],
        interrupt_line=cfg[0x3C], **facts)  # type: ignore[arg-type]


def _pcie(cfg: bytes, pos: int) -> dict[str, object]:
    flags = _u16(cfg, pos + 2)
    ptype = (flags >> 4) & 0xF
    out: dict[str, object] = {"pcie_type": PCIE_TYPES.get(ptype, f"type-{ptype}")}
    if ptype not in _NO_LINK:
        lnkcap = _u32(cfg, pos + 0x0C)
        lnksta = _u16(cfg, pos + 0x12)
        out.update(link_cap_speed=LINK_SPEEDS.get(lnkcap & 0xF),
                   link_cap_width=(lnkcap >> 4) & 0x3F,
                   link_speed=LINK_SPEEDS.get(lnksta & 0xF), link_width=(lnksta >> 4) & 0x3F)
    if ptype in (4, 6) and flags & 0x100:  # a port with the "slot implemented" bit
        out["slot_hotplug_capable"] = bool(_u32(cfg, pos + 0x14) & 0x40)
    return out


def _windows(cfg: bytes) -> dict[str, str]:
    """Bridge forwarding windows, decoded as QEMU's pci_bridge_get_base/limit do."""
    io_base = (cfg[0x1C] & 0xF0) << 8
    io_limit = ((cfg[0x1D] & 0xF0) << 8) | 0xFFF
    if cfg[0x1C] & 0x0F == 0x01:  # 32-bit I/O addressing
        io_base |= _u16(cfg, 0x30) << 16
        io_limit |= _u16(cfg, 0x32) << 16
    mem_base = (_u16(cfg, 0x20) & 0xFFF0) << 16
    mem_limit = ((_u16(cfg, 0x22) & 0xFFF0) << 16) | 0xFFFFF
    pref_base = (_u16(cfg, 0x24) & 0xFFF0) << 16
    pref_limit = ((_u16(cfg, 0x26) & 0xFFF0) << 16) | 0xFFFFF
    if _u16(cfg, 0x24) & 0x0F == 0x01:  # 64-bit prefetchable window
        pref_base |= _u32(cfg, 0x28) << 32
        pref_limit |= _u32(cfg, 0x2C) << 32
    return {"io_window": window(io_base, io_limit), "mem_window": window(mem_base, mem_limit),
            "pref_window": window(pref_base, pref_limit)}


def function_from_facts(path: tuple[str, ...], facts: ConfigFacts, **extra: Any) -> PciFunction:
    """The PciFunction at `path` with the decoded facts, plus what config space
    does not hold (BARs as mapped, driver, id) from `extra`."""
    values = {k: getattr(facts, k) for k in facts.__dataclass_fields__}
    values.update(extra)
    return PciFunction(path=path, **values)
