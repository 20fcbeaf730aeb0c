"""The one shape all three views of a machine's PCI functions share.

The model (expect.py), the QEMU view (query-pci + QOM) and the guest view (sysfs)
each produce a `PciView`; compare.py diffs them field by field.  A field a view
cannot know is None and is not compared for that view.  Functions are matched by
`path`, the chain of slot.function from the root bus down through each bridge,
e.g. ("02.0", "00.0"): bus numbers are firmware choices and are never used to match.

Everything here is plain data that round-trips through JSON so a view can be kept
as a test artifact and diffed later (before/after hotplug or migration).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

ViewSource = Literal["model", "qemu", "guest"]

# Hotplug mechanism of a bus, as scenarios/where.py names it; "none" = not hotpluggable.
HOTPLUG_MECHANISMS = ("acpi-bsel", "acpi-pcihp", "pcie-native", "shpc", "none")


@dataclass(frozen=True)
class Bar:
    """One BAR (index 0-5) or the expansion ROM (index 6)."""

    index: int
    kind: Literal["io", "mem"]
    size: int | None = None
    is_64bit: bool | None = None
    prefetch: bool | None = None
    address: int | None = None  # None: unknown or not mapped (query-pci says -1)


@dataclass(frozen=True)
class PciFunction:
    path: tuple[str, ...]
    id: str | None = None  # the -device id (topology id), None for built-ins
    vendor: int | None = None
    device: int | None = None
    subsystem_vendor: int | None = None
    subsystem: int | None = None
    class_code: int | None = None  # base class << 8 | subclass (what query-pci shows)
    prog_if: int | None = None
    header_type: int | None = None  # 0 endpoint, 1 bridge (multifunction bit removed)
    interrupt_pin: int | None = None  # 0 none, 1-4 INTA-INTD
    interrupt_line: int | None = None  # raw INTERRUPT_LINE register, not the Linux IRQ
    bars: tuple[Bar, ...] | None = None
    capabilities: tuple[str, ...] | None = None  # sorted names, see configspace.CAP_NAMES
    msix_table_size: int | None = None
    pcie_type: str | None = None  # "endpoint", "root-port", ... ; "" = no PCIe capability
    link_cap_speed: float | None = None  # GT/s
    link_cap_width: int | None = None
    link_speed: float | None = None
    link_width: int | None = None
    slot_hotplug_capable: bool | None = None  # PCIe SltCap Hot-Plug Capable (ports only)
    bus_hotplug: str | None = None  # bridges: mechanism of the secondary bus
    secondary_bus: int | None = None
    subordinate_bus: int | None = None
    io_window: str | None = None  # "0xd000-0xdfff", or "off" when base > limit
    mem_window: str | None = None
    pref_window: str | None = None
    driver: str | None = None  # guest driver name, "" when none is bound

    @property
    def name(self) -> str:
        """The id when known, else the path: how a Difference names the function."""
        return self.id or "/".join(self.path)


@dataclass(frozen=True)
class PciView:
    source: ViewSource
    functions: tuple[PciFunction, ...]
    root_bus_hotplug: str | None = None

    def by_path(self) -> dict[tuple[str, ...], PciFunction]:
        return {f.path: f for f in self.functions}

    def function(self, name: str) -> PciFunction:
        """Look a function up by id or by path string "02.0/00.0"."""
        for f in self.functions:
            if f.id == name or "/".join(f.path) == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PciView:
        funcs = []
        for raw in data["functions"]:
            raw = dict(raw)
            raw["path"] = tuple(raw["path"])
            if raw.get("bars") is not None:
                raw["bars"] = tuple(Bar(**b) for b in raw["bars"])
            if raw.get("capabilities") is not None:
                raw["capabilities"] = tuple(raw["capabilities"])
            funcs.append(PciFunction(**raw))
        return cls(source=data["source"], functions=tuple(funcs),
                   root_bus_hotplug=data.get("root_bus_hotplug"))

    @classmethod
    def from_json(cls, text: str) -> PciView:
        return cls.from_dict(json.loads(text))


def window(base: int, limit: int) -> str:
    """The text form of a bridge window; a window with base above limit forwards nothing."""
    return "off" if base > limit else f"{base:#x}-{limit:#x}"


# Fields compared one by one (everything but the match key, the id and the BAR list).
SCALAR_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(PciFunction) if f.name not in ("path", "id", "bars"))
BAR_ATTRS = ("kind", "size", "is_64bit", "prefetch", "address")
# What a topology's [device.expect] table may override.
EXPECT_KEYS: tuple[str, ...] = SCALAR_FIELDS
_BAR_KEY = re.compile(r"^bar([0-6])_(kind|size|64bit|prefetch)$")


def is_expect_key(key: str) -> bool:
    return key in EXPECT_KEYS or bool(_BAR_KEY.match(key))


def bar_expect_key(key: str) -> tuple[int, str] | None:
    """("bar4_size") -> (4, "size"); ("bar0_64bit") -> (0, "is_64bit")."""
    m = _BAR_KEY.match(key)
    if not m:
        return None
    attr = m.group(2)
    return int(m.group(1)), "is_64bit" if attr == "64bit" else attr
