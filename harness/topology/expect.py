"""The model: what the guest should see for a topology, derived by documented rules.

Each rule is a small function with the reason it holds; the per-driver constants
live in drivers.py.  All rules were checked against QEMU 7.2's config space under
TCG (tests/unit/data/ holds the recordings the unit tests replay).  A value the
rules cannot predict stays None and is not compared.  `[device.expect]` overrides
from the topology replace model values last.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from harness.qemu.drivers import (
    BUILTIN,
    BarSpec,
    CompatLayout,
    DriverInfo,
    PropertyQuirk,
    driver_info,
)
from harness.qemu.facts import DRIVER_COMPAT, ROOT_PORT_DEFAULT_LINK, VIRTIO_DEFAULT_VECTORS
from harness.topology.data import Device, Topology, machine_version
from harness.topology.placement import resolve
from harness.topology.tree import (
    acpi_bridge_hotplug,
    buses,
    mgmt_device,
    path_of,
    shpc_handles,
)
from harness.views.pciview import Bar, PciFunction, PciView, bar_expect_key

# virtio transitional device ids (0x1000 + n, a legacy numbering) by virtio type.
VIRTIO_TRANSITIONAL_ID = {1: 0x1000, 2: 0x1001, 5: 0x1002, 3: 0x1003, 8: 0x1004, 4: 0x1005,
                          9: 0x1009}
# What a PCIe endpoint without its own x-speed/x-width reports (virtio, e1000e,
# pcie-pci-bridge, switch upstream port): QEMU fills LnkCap/LnkSta with 2.5 GT/s x1.
ENDPOINT_LINK = (2.5, 1)
PORT_SPEEDS = {"2_5": 2.5, "5": 5.0, "8": 8.0, "16": 16.0, "32": 32.0, "64": 64.0}


def expected_view(topology: Topology) -> PciView:
    """Every PCI function the guest should see, including built-ins and the mgmt NIC."""
    return model_of_resolved(resolve(topology))


def model_of_resolved(topo: Topology) -> PciView:
    """expected_view of a topology layout.resolve() already returned (render.py
    resolves once and derives both the arguments and this model from it)."""
    funcs = [_builtin(topo, slot, fn, info) for (slot, fn), info in
             BUILTIN[topo.kind].items()]
    devices = list(topo.devices) + [mgmt_device(topo)]
    full = replace(topo, devices=tuple(devices))
    by_path: dict[tuple[str, ...], PciFunction] = {}
    for dev in devices:
        info = driver_info(dev.driver)
        path = path_of(full, dev)
        by_path[path] = (_function(full, dev, info, path) if info is not None
                         else PciFunction(path=path, id=dev.id))
    for dev in devices:  # second pass: a port's LnkSta depends on the device below it
        info = driver_info(dev.driver)
        if info is not None and info.bridge in ("root-port", "downstream"):
            path = path_of(full, dev)
            by_path[path] = replace(by_path[path], **_port_link_status(by_path, path))
    for dev in devices:
        path = path_of(full, dev)
        by_path[path] = apply_overrides(by_path[path], dev)
    funcs += by_path.values()
    return PciView(source="model", functions=tuple(sorted(funcs, key=lambda f: f.path)),
                   root_bus_hotplug=root_bus_hotplug(topo))


def _builtin(topo: Topology, slot: int, fn: int, info: DriverInfo) -> PciFunction:
    # The q35 AHCI binds `ahci` only when the guest loads it, i.e. when a disk needs it.
    driver = info.guest_driver if info.guest_driver == "ahci" and _loads_ahci(topo) else None
    return PciFunction(
        path=(f"{slot:02x}.{fn}",), vendor=info.vendor, device=info.device,
        subsystem_vendor=info.subsystem_vendor, subsystem=info.subsystem,
        class_code=info.class_code >> 8, prog_if=info.class_code & 0xFF, header_type=0,
        interrupt_pin=info.interrupt_pin, bars=_bars(info.bars),
        capabilities=tuple(sorted(info.capabilities)), pcie_type="", driver=driver)


def _loads_ahci(topo: Topology) -> bool:
    return topo.ahci_disk is not None or topo.boot_disk is not None or any(
        d.driver == "ich9-ahci" and d.disk is not None for d in topo.devices)


def _bars(specs: tuple[BarSpec, ...]) -> tuple[Bar, ...]:
    """Model BARs; for I/O BARs 64-bit and prefetch mean nothing and stay None."""
    return tuple(Bar(index=b.index, kind=b.kind, size=b.size,
                     is_64bit=None if b.kind == "io" else b.is_64bit,
                     prefetch=None if b.kind == "io" else b.prefetch) for b in specs)


def _has_pcie_cap(topo: Topology, dev: Device, info: DriverInfo) -> bool:
    """Whether the function carries a PCI Express capability where it sits.

    "behind-port" (virtio): QEMU adds it only when the bus is PCIe and not a root bus,
    i.e. below a root or downstream port; on pcie.0 virtio is an integrated
    conventional function.  "express-bus": any PCIe bus (bochs-display).
    """
    bus = buses(topo)[topo.bus_of(dev)]
    return {"never": False, "always": True, "express-bus": bus.express,
            # virtio: legacy-only (disable-modern=on) stays conventional even
            # there (QEMU adds the capability to modern devices only; 7.2.22 and
            # 10.0.2, found by explore).
            "behind-port": bus.role == "slot" and dev.flag("disable-modern") is not True,
            }[info.pcie]


def _function(topo: Topology, dev: Device, info: DriverInfo,
              path: tuple[str, ...]) -> PciFunction:
    pcie = _has_pcie_cap(topo, dev, info)
    caps = set(info.capabilities)
    bars = list(_bars(info.bars))
    device_id = info.device
    subsystem = info.subsystem
    msix = info.msix_table_size
    vendor = info.vendor
    for layout in compat_layouts(topo, dev.driver):
        vendor, device_id = layout.vendor or vendor, layout.device or device_id
        bars = list(_bars(layout.bars)) if layout.bars is not None else bars
    if info.virtio_type is not None:
        device_id, subsystem, bars, caps = _virtio(topo, dev, info, pcie)
    dev = _default_vectors(topo, dev)
    vectors = dev.prop("vectors")
    if vectors is not None and "msix" in caps:
        msix = int(vectors)  # the table has as many entries as vectors asked for
    interrupt_pin = info.interrupt_pin
    for quirk in info.property_quirks():
        if quirk_applies(dev, quirk):
            caps -= {quirk.drops_capability or "", *quirk.also_drops}
            bars = [b for b in bars if b.index not in quirk.drops_bars]
            interrupt_pin = 0 if quirk.drops_interrupt_pin else interrupt_pin
    ptype = ""
    if pcie:
        caps.add("pcie")
        ptype = info.pcie_type or ""
        bus = buses(topo)[topo.bus_of(dev)]
        if info.integrated_on_root and bus.role == "root" and bus.express:
            ptype = "rc-endpoint"
    fields: dict[str, Any] = {
        "path": path, "id": dev.id, "vendor": vendor, "device": device_id,
        "subsystem_vendor": info.subsystem_vendor, "subsystem": subsystem,
        "class_code": info.class_code >> 8, "prog_if": info.class_code & 0xFF,
        "header_type": 1 if info.bridge else 0, "interrupt_pin": interrupt_pin,
        "bars": tuple(sorted(bars, key=lambda b: b.index)), "capabilities": tuple(sorted(caps)),
        "msix_table_size": msix if "msix" in caps else None, "pcie_type": ptype,
        "driver": info.guest_driver}
    if info.subsystem_vendor == 0 and info.bridge and "ssvid" not in caps:
        fields.update(subsystem_vendor=None, subsystem=None)  # type 1 header: no subsystem
    if ptype in ("endpoint", "upstream", "pcie-pci-bridge"):
        fields.update(link_cap_speed=ENDPOINT_LINK[0], link_cap_width=ENDPOINT_LINK[1],
                      link_speed=ENDPOINT_LINK[0], link_width=ENDPOINT_LINK[1])
    if info.bridge == "root-port":
        speed, width = port_link_cap(topo, dev)
        fields.update(link_cap_speed=speed, link_cap_width=width)
    if info.bridge in ("root-port", "downstream"):
        fields["slot_hotplug_capable"] = (dev.flag("hotplug") is not False
                                          and dev.flag("x-native-hotplug") is not False)
    if info.bridge is not None:
        fields["bus_hotplug"] = bus_hotplug(topo, dev, info)
    return PciFunction(**fields)


def compat_layouts(topo: Topology, driver: str) -> list[CompatLayout]:
    """What the machine type's compat properties change of DRIVER (facts.DRIVER_COMPAT)."""
    version = machine_version(topo.machine)
    out = []
    for fact in DRIVER_COMPAT.get(driver, ()):
        layout = fact.at(version) if version is not None else fact.latest()
        if layout is not None:
            out.append(layout)
    return out


def _default_vectors(topo: Topology, dev: Device) -> Device:
    """DEV with the `vectors` its machine type gives it when the topology sets
    none and a compat property changed the default (facts.VIRTIO_DEFAULT_VECTORS)."""
    fact = VIRTIO_DEFAULT_VECTORS.get(dev.driver)
    if fact is None or dev.prop("vectors") is not None:
        return dev
    version = machine_version(topo.machine)
    vectors = fact.at(version) if version is not None else fact.latest()
    return replace(dev, props=dev.props + (("vectors", vectors),))


def quirk_applies(dev: Device, quirk: PropertyQuirk) -> bool:
    """Does DEV set the property value QUIRK names?"""
    if quirk.value in ("on", "off"):
        return dev.flag(quirk.prop) is (quirk.value == "on")
    value = dev.prop(quirk.prop)
    return value is not None and str(value) == quirk.value


def _virtio(topo: Topology, dev: Device, info: DriverInfo,
            pcie: bool) -> tuple[int, int, list[Bar], set[str]]:
    """virtio-pci: legacy I/O BAR0 unless modern-only, MSI-X table in BAR1, modern
    registers in a 64-bit prefetchable BAR4, one vendor capability per region.

    `disable-legacy=auto` means modern-only exactly when the device is PCIe (behind
    a port); then the device id is 0x1040 + type and the subsystem is QEMU's 0x1100,
    otherwise the transitional id 0x1000 + n with the virtio type as subsystem.
    """
    assert info.virtio_type is not None and info.legacy_io_size is not None
    legacy = {True: False, False: True, None: not pcie}[dev.flag("disable-legacy")]
    modern = dev.flag("disable-modern") is not True
    bars = [Bar(1, "mem", 4096, False, False)]
    caps = {"msix"}
    if legacy:
        bars.append(Bar(0, "io", info.legacy_io_size))
    if modern:
        bars.append(Bar(4, "mem", 16 * 1024, True, True))
        caps.add("vendor")
    if pcie:
        caps.add("pm")
    bars += [b for b in _bars(info.bars) if b.index == 6]
    if legacy:
        return VIRTIO_TRANSITIONAL_ID[info.virtio_type], info.virtio_type, bars, caps
    return 0x1040 + info.virtio_type, 0x1100, bars, caps


def port_link_cap(topo: Topology, dev: Device) -> tuple[float, int]:
    """A root port's LnkCap: x-speed/x-width, default 16 GT/s x32 (machine types >= 4.0;
    older ones keep the 2.5 GT/s x1 that QEMU advertised before these properties)."""
    info = driver_info(dev.driver)
    if info is not None and info.link is not None:
        return info.link
    version = machine_version(topo.machine)
    default = (ROOT_PORT_DEFAULT_LINK.at(version) if version is not None
               else ROOT_PORT_DEFAULT_LINK.latest())
    speed = dev.prop("x-speed")
    width = dev.prop("x-width")
    return (PORT_SPEEDS[str(speed)] if speed is not None else default[0],
            int(width) if width is not None else default[1])


def _port_link_status(by_path: dict[tuple[str, ...], PciFunction],
                      port: tuple[str, ...]) -> dict[str, Any]:
    """A port's LnkSta is the trained link: the lower of its own LnkCap and that of
    function 0 below it; an empty port shows its own maximum, and so does a port
    whose function 0 has no PCI Express capability (a legacy-only virtio device:
    no link to train; 10.0.2, found by explore)."""
    me = by_path[port]
    child = by_path.get(port + ("00.0",))
    if me.link_cap_speed is None or me.link_cap_width is None:
        return {}
    if child is None or child.pcie_type == "":
        return {"link_speed": me.link_cap_speed, "link_width": me.link_cap_width}
    if child.link_cap_speed is None or child.link_cap_width is None:
        return {}
    return {"link_speed": min(me.link_cap_speed, child.link_cap_speed),
            "link_width": min(me.link_cap_width, child.link_cap_width)}


def bus_hotplug(topo: Topology, dev: Device, info: DriverInfo) -> str | None:
    """Mechanism of the bus a bridge creates (the QOM hotplug-handler's kind).

    With ACPI bridge hotplug every port and bridge bus is handled by the machine's
    PM device (ICH9-LPC "acpi-pcihp", PIIX4_PM "acpi-bsel"); without it, ports
    handle their own bus natively and SHPC bridges are their own handler.
    hotplug=off on a port leaves its bus without a handler.
    """
    if info.bridge in ("root-port", "downstream") and dev.flag("hotplug") is False:
        return "none"
    if acpi_bridge_hotplug(topo):  # every bridge bus, even a switch's internal one
        return topo.facts.acpi_mechanism
    if info.bridge in ("root-port", "downstream"):
        return "pcie-native"
    if info.bridge in ("pci-bridge", "pcie-pci-bridge"):
        return "shpc" if shpc_handles(topo, dev) else "none"
    return None  # switch-internal and DMI bridge buses without ACPI: not modelled


def root_bus_hotplug(topo: Topology) -> str:
    """pc: ACPI hotplug on pci.0 (acpi-root-pci-hotplug); q35: pcie.0 takes no device_add."""
    return topo.facts.root_hotplug


def apply_overrides(func: PciFunction, dev: Device) -> PciFunction:
    """Replace model values with the topology's [device.expect] entries."""
    changes: dict[str, Any] = {}
    bars = {b.index: b for b in func.bars or ()}
    bar_changed = False
    for key, value in dev.expect:
        bar_key = bar_expect_key(key)
        if bar_key is None:
            changes[key] = value
            continue
        index, attr = bar_key
        bar_changed = True
        if attr == "kind" and value == "none":
            bars.pop(index, None)
            continue
        base = bars.get(index) or Bar(index, "mem")
        bars[index] = replace(base, **{attr: value})  # type: ignore[arg-type]
    if bar_changed:
        changes["bars"] = tuple(bars[i] for i in sorted(bars))
    return replace(func, **changes)
