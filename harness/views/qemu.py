"""The QEMU view: what QEMU says about a machine's PCI functions.

`query-pci` (functions behind bridges nest under pci_bridge.devices) plus, from
QOM, the hotplug handler of every PCI bus.  The parser produces
views.pciview.PciView, the shape the model and the guest view also use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from harness.protocols import QmpEndpoint
from harness.views.configspace import decode, function_from_facts
from harness.views.pciview import Bar, PciFunction, PciView, window

__all__ = ["QomBus", "collect_qemu_view", "config_view", "hotplug_mechanism",
           "parse_qemu_view", "qom_hotplug_info", "qom_pci_buses"]


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
    devices: tuple[BusDevice, ...]  # on this bus, by devfn


class BusDevice(NamedTuple):
    """A device on a QOM PCI bus."""

    devfn: int
    qom_type: str
    path: str


class _ChildBus(NamedTuple):
    owner: str      # the host bridge or bridge whose child the bus is
    name: str
    path: str
    bus_type: str


def _types(qmp: QmpEndpoint, implements: str) -> set[str]:
    return {t["name"] for t in qmp.execute("qom-list-types",
                                           {"implements": implements, "abstract": True})}


def hotplug_mechanism(handler_type: str, handler_path: str, bus_parent_path: str,
                      slot_types: set[str], bridge_types: set[str],
                      refuses_hotplug: bool = False) -> str:
    """Name the way a bus is hot-plugged from its QOM hotplug-handler.

    PIIX4_PM: ACPI with a BSEL number per bus; ICH9-LPC: ACPI PCI hotplug of q35;
    a PCIe slot (root or downstream port) handling its own bus: native PCIe hotplug;
    a PCI bridge that is its own handler: SHPC.  The type decides, never the name
    of the bridge the user wrote.  A port created with hotplug=off stays its bus's
    handler when ACPI is off, but refuses every hot-add (`refuses_hotplug`).
    """
    if not handler_path or refuses_hotplug:
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


def qom_pci_buses(qmp: QmpEndpoint, root_hotplug: bool | None = None) -> tuple[QomBus, ...]:
    """Every PCI bus reachable from the machine's PCI host bridges, via QOM only.

    Works on a paused machine: buses are child<PCI*> properties of the host bridge
    and of each bridge; devices hang on a bus as its child[N] links.

    `root_hotplug`: whether this QEMU takes device_add on the root bus, as probed
    by behaviour (harness/qemu/probe.py).  False overrides the QOM link: 10.0
    names ICH9-LPC as pcie.0's hotplug handler and still refuses device_add
    there.  None trusts the link (replayed recordings).
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

    def child_buses(owner: str) -> list[_ChildBus]:
        out = []
        for prop in qmp.execute("qom-list", {"path": owner}):
            m = re.fullmatch(r"child<(.+)>", prop["type"])
            if m and m.group(1) in pci_bus_types:
                out.append(_ChildBus(owner, prop["name"], f"{owner}/{prop['name']}", m.group(1)))
        return out

    hosts = [f"/machine/{p['name']}" for p in qmp.execute("qom-list", {"path": "/machine"})
             if (m := re.fullmatch(r"child<(.+)>", p["type"])) and m.group(1) in host_types]
    result: list[QomBus] = []
    todo = [bus for host in hosts for bus in child_buses(host)]
    while todo:
        owner, name, path, btype = todo.pop(0)
        handler = qmp.execute("qom-get", {"path": path, "property": "hotplug-handler"}) or ""
        htype = qom_type(handler) if handler else ""
        devices = []
        for prop in qmp.execute("qom-list", {"path": path}):
            m = re.fullmatch(r"link<(.+)>", prop["type"])
            if not (m and prop["name"].startswith("child[")):
                continue
            dev = qmp.execute("qom-get", {"path": path, "property": prop["name"]})
            devfn = qmp.execute("qom-get", {"path": dev, "property": "addr"})
            devices.append(BusDevice(int(devfn), m.group(1), dev))
            if m.group(1) in bridge_types:
                todo += child_buses(dev)
        owner_type = qom_type(owner)
        # A PCIe slot created with hotplug=off; or a root bus whose QEMU refuses
        # device_add although QOM names a handler (behaviour beats the link).
        refuses = ((owner_type in slot_types
                    and not qmp.execute("qom-get", {"path": owner, "property": "hotplug"}))
                   or (owner_type in host_types and root_hotplug is False))
        result.append(QomBus(
            name=name, path=path, express=btype in pcie_bus_types, parent_path=owner,
            parent_type=owner_type, handler_path=handler, handler_type=htype,
            hotplug=hotplug_mechanism(htype, handler, owner, slot_types, bridge_types,
                                      refuses),
            devices=tuple(sorted(devices))))
    return tuple(result)


def qom_hotplug_info(buses: Iterable[QomBus]) -> dict[str, str]:
    """{bus name: mechanism}; a bridge's bus carries the bridge's id as its name."""
    return {b.name: b.hotplug for b in buses}


def collect_qemu_view(qmp: QmpEndpoint, root_hotplug: bool | None = None) -> PciView:
    """query-pci plus the hotplug mechanism of every bus of a running machine
    (see qom_pci_buses for `root_hotplug`)."""
    return parse_qemu_view(qmp.execute("query-pci"),
                           qom_hotplug_info(qom_pci_buses(qmp, root_hotplug)))


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
            funcs.append(function_from_facts(path, facts, id=q.id, bars=q.bars))
            if "pci_bridge" in d:
                walk(d["pci_bridge"].get("devices", ()), path)

    walk(query_pci_result[0]["devices"], ())
    return PciView(source="guest", functions=tuple(sorted(funcs, key=lambda f: f.path)))
