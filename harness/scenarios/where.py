"""Where can a device go?  A connectivity oracle built from QMP introspection.

Ask a paused machine (-S) and get every PCI bus where DRIVER can be connected:
its kind, its free slots, how it is hot-plugged and, for a bridge, the name of
the bus the new device would create.  The facts come from QEMU itself, never
from a table of device names:

- qom-list-types implements=... : what DRIVER is (PCI at all, PCIe-only,
  conventional-only, a bridge, a root/downstream/upstream port);
- device-list-properties        : properties a bridge needs (chassis numbers);
- QOM walk (views.qom_pci_buses) : buses, their owners, the devices on them and
  each bus's hotplug-handler, whose QOM type names the mechanism.

Answers follow the PCI/PCIe specs, and say when QEMU is more lenient: QEMU 7.2
accepts a device at any slot below a PCIe port, but the link reaches slot 0 only;
it also cold-plugs a root port anywhere.  pcie.0 accepts cold-plug but refuses
device_add (no hotplug handler), so `hotplug_only` drops it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from harness.errors import UserError
from harness.protocols import QmpEndpoint
from harness.topology.rules import BusRole, DeviceRole, placement
from harness.views import QomBus, qom_pci_buses


@dataclass(frozen=True)
class BusAnswer:
    bus: str
    kind: Literal["pci", "pcie"]
    free_slots: tuple[int, ...]
    hotplug: str | None  # acpi-bsel | acpi-pcihp | pcie-native | shpc | None
    secondary_bus_name: str | None  # the bus DRIVER creates here, if it is a bridge
    qemu_also_accepts: tuple[int, ...] = ()  # slots QEMU takes although the spec does not
    note: str | None = None


# Who rules a bus out: "qemu" -- QEMU itself refuses (no hotplug handler, a
# full conventional bus); "spec" -- the PCI/PCIe rules forbid it, QEMU may still
# accept it (7.2 cold-plugs nearly anything anywhere), so do not read "QEMU took
# it" as "it is legal".
RefusedBy = Literal["qemu", "spec"]


@dataclass(frozen=True)
class Excluded:
    bus: str
    reason: str
    refused_by: RefusedBy


@dataclass(frozen=True)
class WhereAnswer:
    driver: str
    buses: tuple[BusAnswer, ...]
    excluded: tuple[Excluded, ...] = ()  # buses DRIVER cannot go to, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "buses": [{**asdict(b), "free_slots": list(b.free_slots),
                       "qemu_also_accepts": list(b.qemu_also_accepts)} for b in self.buses],
            "excluded": [asdict(e) for e in self.excluded],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


@dataclass(frozen=True)
class _DriverFacts:
    """What QOM says about DRIVER."""

    express: bool
    conventional: bool
    bridge: bool
    root_port: bool
    downstream_port: bool
    upstream_port: bool
    chassis_prop: str | None


class _Types:
    """qom-list-types implements=IFACE, asked once per interface."""

    def __init__(self, qmp: QmpEndpoint) -> None:
        self.qmp = qmp
        self.cache: dict[str, set[str]] = {}

    def __call__(self, iface: str) -> set[str]:
        if iface not in self.cache:
            self.cache[iface] = {t["name"] for t in self.qmp.execute(
                "qom-list-types", {"implements": iface, "abstract": True})}
        return self.cache[iface]


def _driver_facts(qmp: QmpEndpoint, driver: str, types: _Types) -> _DriverFacts:
    if driver not in types("pci-device"):
        raise UserError(f"{driver!r} is not a PCI device this QEMU knows",
                        fix="list PCI devices with `qemu-system-x86_64 -device help`")
    slots = types("pcie-slot")
    ports = types("pcie-port")
    props = {p["name"] for p in qmp.execute("device-list-properties", {"typename": driver})}
    chassis = next((p for p in ("chassis_nr", "chassis") if p in props), None)
    return _DriverFacts(
        express=driver in types("pci-express-device"),
        conventional=driver in types("conventional-pci-device"),
        bridge=driver in types("base-pci-bridge"),
        root_port=driver in types("pcie-root-port-base"),
        downstream_port=driver in slots and driver not in types("pcie-root-port-base"),
        upstream_port=driver in ports and driver not in slots,
        chassis_prop=chassis)


def _role(bus: QomBus, hosts: set[str], slots: set[str], upstream: set[str]) -> BusRole:
    if bus.parent_type in hosts:
        return "root"
    if bus.parent_type in slots:
        return "slot"
    if bus.parent_type in upstream:
        return "switch"
    return "bridge"


def _placement(facts: _DriverFacts, role: BusRole, express: bool) -> tuple[bool, str | None]:
    """(allowed by the spec, note).  Not allowed -> note is the reason."""
    rule = placement(DeviceRole(
        port="root" if facts.root_port else "downstream" if facts.downstream_port
        else "upstream" if facts.upstream_port else None,
        express_only=facts.express and not facts.conventional,
        conventional_only=facts.conventional and not facts.express), role, express)
    return rule.allowed, rule.reason


def _suggest_id(driver: str, taken: set[str]) -> str:
    n = 1
    while f"{driver}{n}" in taken:
        n += 1
    return f"{driver}{n}"


def where(qmp: QmpEndpoint, driver: str, *, hotplug_only: bool = False,
          device_id: str | None = None, root_hotplug: bool | None = None) -> WhereAnswer:
    """Every bus of the machine behind `qmp` where DRIVER can be connected.

    `device_id`: the id you will give the device; a bridge's secondary bus takes
    that name (by default a free id is suggested).  With `hotplug_only`, only
    buses that accept device_add are listed, with the slots hot-add can use.
    `root_hotplug`: whether this QEMU takes device_add on the root bus, probed by
    behaviour (Guest.root_bus_hotplug); the QOM handler link alone misleads on 10.0.
    """
    types = _Types(qmp)
    facts = _driver_facts(qmp, driver, types)
    buses = qom_pci_buses(qmp, root_hotplug)
    hosts = types("pci-host-bridge")
    slots = types("pcie-slot")
    upstream = types("pcie-port") - slots
    secondary = None
    if facts.bridge:
        secondary = device_id or _suggest_id(driver, {b.name for b in buses})
    answers: list[BusAnswer] = []
    excluded: list[Excluded] = []
    for bus in buses:
        role = _role(bus, hosts, slots, upstream)
        allowed, note = _placement(facts, role, bus.express)
        if not allowed:
            excluded.append(Excluded(bus.name, note or "not allowed", "spec"))
            continue
        hotplug = None if bus.hotplug == "none" else bus.hotplug
        if hotplug_only and hotplug is None:
            excluded.append(Excluded(bus.name, _no_hotplug_reason(bus, role), "qemu"))
            continue
        used = {devfn >> 3 for devfn, _, _ in bus.devices}
        free = [s for s in range(32) if s not in used]
        lenient: list[int] = []
        if role == "slot":  # a PCIe link reaches device 0 only
            lenient = [s for s in free if s != 0]
            free = [s for s in free if s == 0]
            if lenient:
                note = _join(note, "QEMU 7.2 also accepts slots 1-31 here; the PCIe spec "
                                   "does not")
        if hotplug == "shpc":
            # SHPC drives slots 1-31 only, and QEMU runs the SHPC plug callback for
            # cold-plugged devices too: -device at slot 0 of an SHPC bus is refused
            # ("Unsupported PCI slot 0 for standard hotplug controller").
            free = [s for s in free if s != 0]
        if not free and lenient and hotplug_only:
            # device_add below a port treats slot 0 as function 0 of every slot: with
            # it taken QEMU refuses the other slots too ("slot 0 function 0 already
            # occupied"), although cold-plug takes them.
            excluded.append(Excluded(bus.name, "slot 0 is taken (QEMU refuses device_add "
                                               "at any other slot below a port)", "qemu"))
            continue
        if not free:
            excluded.append(Excluded(bus.name, "no free slot" + (
                " (QEMU 7.2 would still take slots 1-31 below this port)" if lenient else ""),
                "spec" if lenient else "qemu"))
            continue
        if hotplug_only and facts.bridge:
            note = _join(note, "a hot-added bridge is accepted, but devices hot-plugged "
                               "behind it are not seen by the guest (QEMU 7.2)")
        if facts.chassis_prop:
            note = _join(note, f"give it a unique {facts.chassis_prop}")
        answers.append(BusAnswer(bus=bus.name, kind="pcie" if bus.express else "pci",
                                 free_slots=tuple(free), hotplug=hotplug,
                                 secondary_bus_name=secondary,
                                 qemu_also_accepts=tuple(lenient), note=note))
    return WhereAnswer(driver=driver, buses=tuple(answers), excluded=tuple(excluded))


def _no_hotplug_reason(bus: QomBus, role: BusRole) -> str:
    """Why device_add refuses BUS, in the terms QEMU itself would use."""
    if not bus.handler_path:
        return "the bus has no hotplug handler (device_add refuses it)"
    if role == "root":
        return (f"QEMU refuses device_add on its root bus (probed), although QOM names "
                f"{bus.handler_type} its hotplug handler")
    return "the port was created with hotplug=off (device_add refuses it)"


def _join(a: str | None, b: str) -> str:
    return f"{a}; {b}" if a else b
