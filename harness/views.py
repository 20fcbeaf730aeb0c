"""Collect and parse the QEMU view and the guest view of a machine's PCI functions.

QEMU view: `query-pci` (functions behind bridges nest under pci_bridge.devices)
plus, from QOM, the hotplug handler of every PCI bus.  Guest view: the output of
GUEST_DUMP_SCRIPT, run in the guest by busybox sh; it prints raw sysfs (config
space as hex, resource, driver link) and this module decodes it with
topology.configspace, so the verdict does not depend on lspci's wording.

Both parsers produce topology.pciview.PciView, the shape the model also uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from harness.errors import HarnessError
from harness.topology.configspace import ConfigFacts, decode
from harness.topology.pciview import Bar, PciFunction, PciView, window

__all__ = ["GUEST_DUMP_SCRIPT", "GUEST_LSPCI_SCRIPT", "Qmp", "QomBus", "collect_qemu_view", "config_view",
           "hotplug_mechanism", "parse_guest_view", "parse_qemu_view", "qom_hotplug_info",
           "qom_pci_buses"]


class Qmp(Protocol):
    """Anything that runs a QMP command and returns its 'return' value (raises on error)."""

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


# --------------------------------------------------------------------------- QEMU view

def _path(parent: tuple[str, ...], entry: Mapping[str, Any]) -> tuple[str, ...]:
    return parent + (f"{entry['slot']:02x}.{entry['function']}",)


def _qemu_bars(regions: Iterable[Mapping[str, Any]]) -> tuple[Bar, ...]:
    bars = []
    for r in regions:
        io = r["type"] == "io"
        rom = r["bar"] == 6
        bars.append(Bar(index=r["bar"], kind="io" if io else "mem", size=r["size"],
                        is_64bit=None if io or rom else r.get("mem_type_64"),
                        prefetch=None if io or rom else r.get("prefetch"),
                        address=None if r["address"] in (-1, 0xFFFFFFFFFFFFFFFF)
                        else r["address"]))
    return tuple(sorted(bars, key=lambda b: b.index))


def _range(r: Mapping[str, int] | None) -> str | None:
    return None if r is None else window(r["base"], r["limit"])


def parse_qemu_view(query_pci_result: list[dict[str, Any]],
                    qom_info: Mapping[str, str] | None = None) -> PciView:
    """Turn a query-pci result (and {bus name: hotplug mechanism}) into a PciView.

    query-pci reports no capabilities, link or prog-if: those fields stay None.
    Collect it after the firmware has numbered the buses; before that (-S)
    functions behind bridges are missing (their secondary bus is still 0).
    """
    qom = dict(qom_info or {})
    funcs: list[PciFunction] = []

    def walk(devices: Iterable[Mapping[str, Any]], parent: tuple[str, ...]) -> None:
        for d in devices:
            bridge = d.get("pci_bridge")
            ident = d["id"]
            qid = d.get("qdev_id") or None
            extra: dict[str, Any] = {}
            if bridge is not None:
                bus = bridge["bus"]
                extra = {"secondary_bus": bus["secondary"], "subordinate_bus": bus["subordinate"],
                             "io_window": _range(bus.get("io_range")),
                             "mem_window": _range(bus.get("memory_range")),
                             "pref_window": _range(bus.get("prefetchable_range")),
                             "bus_hotplug": qom.get(qid) if qid else None}
            else:
                extra = {"subsystem_vendor": ident.get("subsystem-vendor"),
                             "subsystem": ident.get("subsystem")}
            path = _path(parent, d)
            funcs.append(PciFunction(
                path=path, id=qid, vendor=ident["vendor"], device=ident["device"],
                class_code=d["class_info"]["class"], header_type=1 if bridge else 0,
                interrupt_pin=d["irq_pin"], interrupt_line=d.get("irq"),
                bars=_qemu_bars(d.get("regions", ())), **extra))
            if bridge is not None:
                walk(bridge.get("devices", ()), path)

    root = query_pci_result[0] if query_pci_result else {"devices": []}
    walk(root["devices"], ())
    root_hp = qom.get("pcie.0", qom.get("pci.0"))
    return PciView(source="qemu", functions=tuple(sorted(funcs, key=lambda f: f.path)),
                   root_bus_hotplug=root_hp)


@dataclass(frozen=True)
class QomBus:
    """A PCI bus found in the QOM tree of a (possibly paused) machine."""

    name: str
    path: str
    express: bool
    parent_path: str  # the device (bridge or host bridge) that owns the bus
    parent_type: str
    handler_path: str  # "" when the bus has no hotplug handler
    handler_type: str
    hotplug: str  # mechanism, see hotplug_mechanism()
    devices: tuple[tuple[int, str, str], ...]  # (devfn, QOM type, QOM path) on this bus


def _types(qmp: Qmp, implements: str) -> set[str]:
    return {t["name"] for t in qmp.execute("qom-list-types",
                                           {"implements": implements, "abstract": True})}


def hotplug_mechanism(handler_type: str, handler_path: str, bus_parent_path: str,
                      slot_types: set[str], bridge_types: set[str],
                      port_hotplug: bool | None = None) -> str:
    """Name the way a bus is hot-plugged from its QOM hotplug-handler.

    PIIX4_PM: ACPI with a BSEL number per bus; ICH9-LPC: ACPI PCI hotplug of q35;
    a PCIe slot (root or downstream port) handling its own bus: native PCIe hotplug;
    a PCI bridge that is its own handler: SHPC.  The type decides, never the name
    of the bridge the user wrote.  A port created with hotplug=off (`port_hotplug`
    False) stays its bus's handler when ACPI is off, but refuses every hot-add.
    """
    if not handler_path or port_hotplug is False:
        return "none"
    if handler_type == "PIIX4_PM":
        return "acpi-bsel"
    if handler_type == "ICH9-LPC":
        return "acpi-pcihp"
    if handler_type in slot_types:
        return "pcie-native"
    if handler_path == bus_parent_path and handler_type in bridge_types:
        return "shpc"
    return f"other:{handler_type}"


def qom_pci_buses(qmp: Qmp) -> tuple[QomBus, ...]:
    """Every PCI bus reachable from the machine's PCI host bridges, via QOM only.

    Works on a paused machine: buses are child<PCI*> properties of the host bridge
    and of each bridge; devices hang on a bus as its child[N] links.
    """
    pci_bus_types = _types(qmp, "PCI")
    pcie_bus_types = _types(qmp, "PCIE")
    host_types = _types(qmp, "pci-host-bridge")
    slot_types = _types(qmp, "pcie-slot")
    bridge_types = _types(qmp, "base-pci-bridge")
    type_cache: dict[str, str] = {}

    def qom_type(path: str) -> str:
        if path not in type_cache:
            type_cache[path] = qmp.execute("qom-get", {"path": path, "property": "type"})
        return type_cache[path]

    def child_buses(owner: str) -> list[tuple[str, str, str]]:
        out = []
        for prop in qmp.execute("qom-list", {"path": owner}):
            m = re.fullmatch(r"child<(.+)>", prop["type"])
            if m and m.group(1) in pci_bus_types:
                out.append((prop["name"], f"{owner}/{prop['name']}", m.group(1)))
        return out

    hosts = [f"/machine/{p['name']}" for p in qmp.execute("qom-list", {"path": "/machine"})
             if (m := re.fullmatch(r"child<(.+)>", p["type"])) and m.group(1) in host_types]
    result: list[QomBus] = []
    todo = [(host, bus) for host in hosts for bus in child_buses(host)]
    while todo:
        owner, (name, path, btype) = todo.pop(0)
        handler = qmp.execute("qom-get", {"path": path, "property": "hotplug-handler"}) or ""
        htype = qom_type(handler) if handler else ""
        devices = []
        for prop in qmp.execute("qom-list", {"path": path}):
            m = re.fullmatch(r"link<(.+)>", prop["type"])
            if not (m and prop["name"].startswith("child[")):
                continue
            dev = qmp.execute("qom-get", {"path": path, "property": prop["name"]})
            devfn = qmp.execute("qom-get", {"path": dev, "property": "addr"})
            devices.append((int(devfn), m.group(1), dev))
            if m.group(1) in bridge_types:
                todo += [(dev, bus) for bus in child_buses(dev)]
        owner_type = qom_type(owner)
        port_hotplug = (bool(qmp.execute("qom-get", {"path": owner, "property": "hotplug"}))
                        if owner_type in slot_types else None)
        result.append(QomBus(
            name=name, path=path, express=btype in pcie_bus_types, parent_path=owner,
            parent_type=owner_type, handler_path=handler, handler_type=htype,
            hotplug=hotplug_mechanism(htype, handler, owner, slot_types, bridge_types,
                                      port_hotplug),
            devices=tuple(sorted(devices))))
    return tuple(result)


def qom_hotplug_info(buses: Iterable[QomBus]) -> dict[str, str]:
    """{bus name: mechanism}; a bridge's bus carries the bridge's id as its name."""
    return {b.name: b.hotplug for b in buses}


def collect_qemu_view(qmp: Qmp) -> PciView:
    """query-pci plus the QOM hotplug handlers of a running machine."""
    return parse_qemu_view(qmp.execute("query-pci"), qom_hotplug_info(qom_pci_buses(qmp)))


# --------------------------------------------------------------------------- guest view

# busybox sh.  One "@@ fn" block per function, then one "@@ configs" section.
# Few processes (under TCG each fork+exec costs milliseconds, more right after a
# migration, when QEMU has translated none of the guest's code): shell builtins
# read the small sysfs files, `cd -P` + $PWD resolve the symlinks (readlink
# would fork twice per function), and the first 256 config bytes of every
# function (the standard header and capabilities, all configspace.decode
# reads) come from one `head | od` for all functions, one line of hex bytes
# each, in the order the section's header names them (hexdump if od lacks -w).
GUEST_DUMP_SCRIPT = r"""
names=""
set --
for d in /sys/bus/pci/devices/*; do
  echo "@@ fn ${d##*/}"
  cd -P "$d" && echo "sysfs $PWD"
  drv=""; [ -e "$d/driver" ] && cd -P "$d/driver" && drv=$PWD
  echo "driver ${drv##*/}"
  irq=""; read -r irq < "$d/irq"; echo "irq $irq"
  for f in current_link_speed current_link_width max_link_speed max_link_width; do
    [ -r "$d/$f" ] && read -r v < "$d/$f" 2>/dev/null && echo "$f $v"
  done
  while read -r line; do echo "res $line"; done < "$d/resource"
  names="$names ${d##*/}"
  set -- "$@" "$d/config"
done
cd /
echo "@@ configs$names"
if [ $# -gt 0 ]; then
  head -q -c 256 "$@" | od -An -v -tx1 -w256 2>/dev/null ||
    head -q -c 256 "$@" | hexdump -v -e '256/1 "%02x " "\n"'
fi
for s in /sys/bus/pci/slots/*; do
  [ -r "$s/address" ] && read -r a < "$s/address" && echo "@@ slot ${s##*/} $a"
done
echo "@@ end"
"""
# Appended for people (kept as an artifact next to the views), never parsed.
GUEST_LSPCI_SCRIPT = r"""
if command -v lspci >/dev/null 2>&1; then echo "@@ lspci"; lspci -vvv -nn; fi
"""

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:([0-9a-f]{2})\.([0-7])$")
IORESOURCE_IO, IORESOURCE_MEM = 0x100, 0x200
IORESOURCE_PREFETCH, IORESOURCE_MEM_64 = 0x2000, 0x100000
# Ranges the kernel pins without a BAR behind them: the legacy IDE ports
# (0x1f0, 0x3f6, 0x170, 0x376) a compatibility-mode IDE function gets in slots
# 0-3 (drivers/pci/probe.c LEGACY_IO_RESOURCE).  Not BARs: QEMU lists none there.
IORESOURCE_PCI_FIXED = 0x10
IORESOURCE_ROM_SHADOW = 0x2  # bus-specific bit of a ROM resource: "use the shadow copy"


def sysfs_path(real_path: str) -> tuple[str, ...]:
    """/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0 -> ("02.0", "00.0")."""
    parts = []
    for comp in real_path.strip().split("/"):
        m = _BDF.match(comp)
        if m:
            parts.append(f"{m.group(1)}.{m.group(2)}")
    return tuple(parts)


def _guest_bars(lines: list[str]) -> tuple[Bar, ...]:
    bars = []
    for index, line in enumerate(lines[:7]):
        start, end, flags = (int(x, 16) for x in line.split()[:3])
        if not flags & (IORESOURCE_IO | IORESOURCE_MEM) or end < start:
            continue
        if flags & IORESOURCE_PCI_FIXED and index < 6:
            continue
        if index == 6 and flags & IORESOURCE_PCI_FIXED and flags & IORESOURCE_ROM_SHADOW:
            # The boot VGA's resource 6 is the legacy shadow copy at 0xc0000
            # (128 KiB, arch/x86/pci/fixup.c pci_fixup_video): the guest tells
            # that the function has a ROM, not the ROM BAR's size or address.
            bars.append(Bar(index=6, kind="mem"))
            continue
        io = bool(flags & IORESOURCE_IO)
        rom = index == 6  # Linux marks ROMs prefetchable; QEMU does not: not compared
        bars.append(Bar(index=index, kind="io" if io else "mem", size=end - start + 1,
                        is_64bit=None if io or rom else bool(flags & IORESOURCE_MEM_64),
                        prefetch=None if io or rom else bool(flags & IORESOURCE_PREFETCH),
                        address=start))
    return tuple(bars)


def _from_facts(path: tuple[str, ...], facts: ConfigFacts, **extra: Any) -> PciFunction:
    values = {k: getattr(facts, k) for k in facts.__dataclass_fields__}
    values.update(extra)
    return PciFunction(path=path, **values)


class GuestDumpError(HarnessError):
    """GUEST_DUMP_SCRIPT output that does not add up."""


def parse_guest_view(text: str) -> PciView:
    """Parse GUEST_DUMP_SCRIPT output into a PciView.

    Config bytes come from the "@@ configs NAME..." section (one hex line per
    name) or, in older dumps, from a "config" line inside the function's block.
    """
    blocks: dict[str, dict[str, Any]] = {}
    block: dict[str, Any] | None = None
    section = ""
    config_names: list[str] = []
    config_lines: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "@@":
            section, _, rest = value.partition(" ")
            block = None
            if section == "end":
                break
            if section == "fn":
                block = blocks.setdefault(rest.strip(), {"res": [], "driver": ""})
            elif section == "configs":
                config_names = rest.split()
        elif section == "configs":
            if line.strip():
                config_lines.append(line)
        elif block is not None:
            if key == "res":
                block["res"].append(value)
            elif key == "config":  # "8680..." or "86 80 ..." (bytes.fromhex skips spaces)
                block[key] = " ".join(value.split())
            elif key in ("sysfs", "driver"):
                block[key] = value.strip()
    if len(config_lines) != len(config_names):
        raise GuestDumpError(
            f"the guest's config-space dump has {len(config_lines)} lines for "
            f"{len(config_names)} functions (did a function come or go during the dump?)")
    for name, hexline in zip(config_names, config_lines):
        if name in blocks:
            blocks[name]["config"] = " ".join(hexline.split())
    funcs = []
    for found in blocks.values():
        if "config" not in found or "sysfs" not in found:
            continue
        facts = decode(bytes.fromhex(found["config"]))
        funcs.append(_from_facts(sysfs_path(found["sysfs"]), facts,
                                 bars=_guest_bars(found["res"]), driver=found["driver"]))
    return PciView(source="guest", functions=tuple(sorted(funcs, key=lambda f: f.path)))


def config_view(query_pci_result: list[dict[str, Any]], configs: Mapping[str, str]) -> PciView:
    """A guest-like view decoded from config space that QEMU itself exposes.

    Development and unit tests only: `configs` maps "BB:SS.F" to the hex of 256
    config bytes read through HMP (xp on q35 MMCONFIG, port 0xcf8 on pc).  BARs
    and windows come from query-pci, the rest from the bytes, so expect.py's
    capability and link rules can be checked without booting a guest.
    """
    qemu = parse_qemu_view(query_pci_result)
    funcs = []

    def walk(devices: Iterable[Mapping[str, Any]], parent: tuple[str, ...]) -> None:
        for d in devices:
            path = _path(parent, d)
            key = f"{d['bus']:02x}:{d['slot']:02x}.{d['function']}"
            facts = decode(bytes.fromhex(configs[key]))
            q = qemu.by_path()[path]
            funcs.append(_from_facts(path, facts, id=q.id, bars=q.bars))
            if "pci_bridge" in d:
                walk(d["pci_bridge"].get("devices", ()), path)

    walk(query_pci_result[0]["devices"], ())
    return PciView(source="guest", functions=tuple(sorted(funcs, key=lambda f: f.path)))
