"""q35: ACPI hotplug (the default), native PCIe hotplug and SHPC, and hotplug=off.

Seed item "Hotplug for Q35".  The mechanism of each bus is read from the QOM
type of its hotplug-handler; the topology switches it the two ways QEMU 7.2
offers (7.2 has no per-port switch): `acpi_hotplug = false` (a -global on
ICH9-LPC) or the older machine type pc-q35-6.0.  Unplug latency per mechanism
is recorded as a test property (junit) and checked against what the mechanism
implies: ACPI ejects at once; pciehp waits 5 s after the attention button.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.qemu.facts import (
    ACPI_HOTPLUG_OFF_PORT_REFUSAL,
    HOTPLUG_OFF_PORT_QOM_HANDLER,
    parse_version,
)
from harness.report.figures import record_figure
from harness.scenarios.hotplug.check import step_problems
from harness.scenarios.hotplug.plug import BusNotHotpluggable, Hotplugger, PlugRefused, PlugSpec
from harness.scenarios.hotplug.stress import CycleReport, checked_cycle
from harness.scenarios.threeview import ThreeViews, changes, collect_views
from harness.topology import topology_from_dict

pytestmark = pytest.mark.seed("q35-hotplug")
SEED = 7
ATTENTION_BUTTON_S = 5.0  # pciehp: the guest waits 5 s after a button press before acting


def _topology(**top: Any) -> Any:
    return topology_from_dict({"machine": "q35", **top, "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
        {"id": "rp3", "driver": "pcie-root-port", "addr": "4.0"},
        # The bridge gets a cold-plugged function so that the firmware opens its windows.
        {"id": "ppb", "driver": "pcie-pci-bridge", "bus": "rp3"},
        {"id": "net1", "driver": "virtio-net-pci", "bus": "ppb", "addr": "1.0"},
        {"id": "rp4", "driver": "pcie-root-port", "addr": "5.0", "hotplug": "off"},
    ]})

def _record(request: pytest.FixtureRequest, key: str, value: object) -> None:
    """A figure for the report (user_properties, as the plugin's boot_s)."""
    request.node.user_properties.append((key, value))



SLTSTA_PDS = 0x0040  # PCIe Slot Status: Presence Detect State (1 = adapter present)


def _slot_occupied(guest: Any, port_bdf: str) -> bool:
    """Presence Detect State of a port's slot, read from its PCIe capability."""
    return bool(int(guest.succeed(f"setpci -s {port_bdf} CAP_EXP+0x1a.w").strip(), 16)
                & SLTSTA_PDS)


def _assert_clean(report: CycleReport) -> None:
    assert report.failures == (), "\n".join(f"{f.step}: {f.what}" for f in report.failures)


@pytest.mark.smoke
def test_plug_into_an_empty_root_port_brings_its_link_up(make_guest, artifacts: Path):
    """The step check is two-way: the model predicts the port's link going from
    the port's own maximum to the endpoint's, and that change must happen."""
    guest = make_guest(topology_from_dict({"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"}]}))
    hp = Hotplugger(guest, artifacts / "hotplug")
    report = checked_cycle(guest, hp, PlugSpec("hd1", "virtio-blk-pci", "rp1", 0), SEED)
    _assert_clean(report)
    predicted = {(c.device, c.field) for c in changes(report.before, report.after_plug).model}
    assert {("rp1", "link_speed"), ("hd1", "present")} <= predicted, predicted
    # Fed a plug that did not happen (the views QEMU and the guest showed before
    # it, against the model after it), the check names each missing change.
    nothing = ThreeViews(model=report.after_plug.model, qemu=report.before.qemu,
                         guest=report.before.guest)
    problems = step_problems(report.before, nothing, report.plugged.path, added=True)
    assert any(p.startswith("guest view: predicted change 02.0: link_speed: ")
               and "did not happen (the view shows no change)" in p for p in problems), problems
    assert any(p.startswith("qemu view: 02.0/00.0 should be added") for p in problems), problems


def test_acpi_hotplug_on_root_ports_and_behind_pcie_pci_bridge(make_guest, artifacts: Path,
                                                               request):
    guest = make_guest(_topology())
    hp = Hotplugger(guest, artifacts / "hotplug")
    buses = hp.buses()
    found = {n: (buses[n].hotplug, buses[n].handler_type) for n in ("rp1", "rp2", "ppb", "rp4")}
    # hotplug=off: no hot-add (behaviour), whatever QOM names as the handler,
    # which changed after 7.2 (facts.HOTPLUG_OFF_PORT_QOM_HANDLER).
    off_handler = HOTPLUG_OFF_PORT_QOM_HANDLER.at(parse_version(guest.plan.binary.version))
    assert found == {"rp1": ("acpi-pcihp", "ICH9-LPC"), "rp2": ("acpi-pcihp", "ICH9-LPC"),
                     "ppb": ("acpi-pcihp", "ICH9-LPC"), "rp4": ("none", off_handler)}, found
    views = collect_views(guest, hp.topology, lspci=False)
    for n, (bus, slot, driver, mac) in enumerate([
            ("rp1", 0, "virtio-blk-pci", None), ("rp2", 0, "e1000e", "52:54:01:00:01:02"),
            ("ppb", 5, "virtio-blk-pci", None), ("ppb", 6, "e1000", "52:54:01:00:01:06")]):
        report = checked_cycle(guest, hp, PlugSpec(f"hp{n}", driver, bus, slot, mac=mac),
                               SEED, views)
        _assert_clean(report)
        views = report.after_unplug
        assert report.unplugged.mechanism == "acpi-pcihp"
        _record(request, f"unplug_s:acpi-pcihp:{bus}", round(report.unplugged.seconds, 3))
        record_figure(request, "hotplug_plug_s:acpi-pcihp", report.plugged.seconds)
        record_figure(request, "hotplug_unplug_s:acpi-pcihp", report.unplugged.seconds)
        assert report.unplugged.seconds < ATTENTION_BUTTON_S, (
            f"ACPI unplug took {report.unplugged.seconds:.2f} s: ACPI has no button wait")
    # hotplug=off: refused before QEMU is asked, and by QEMU itself with its message.
    with pytest.raises(BusNotHotpluggable, match="rp4"):
        hp.plug(PlugSpec("off1", "e1000e", "rp4", 0))
    with pytest.raises(PlugRefused) as info:
        hp.plug(PlugSpec("off2", "e1000e", "rp4", 0), preflight=False)
    refusal = ACPI_HOTPLUG_OFF_PORT_REFUSAL.at(parse_version(guest.plan.binary.version))
    assert info.value.desc.rstrip(".") == refusal.format(bus="rp4"), info.value.desc
    assert "off2" not in hp.plugged and hp.topology.devices == guest.plan.topology.devices
    assert guest.console is not None and guest.console.trouble() == []


@pytest.mark.known_gap("acpi-port-presence-detect-clear")
def test_acpi_hotplug_port_reports_its_slot_occupied(make_guest, artifacts: Path):
    """A port's slot state follows the adapter in it, whichever mechanism handles
    hotplug: occupied with a cold-plugged device, empty, then occupied after a
    plug (the spec's Presence Detect State)."""
    guest = make_guest(topology_from_dict({"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "d1", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "8M"},
        {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"}]}))
    hp = Hotplugger(guest, artifacts / "hotplug")
    # Preconditions, not the gap (whose signature is the assertion below): a harness
    # error, so a port stuck at "occupied" or another mechanism is a plain failure.
    mechanism = hp.mechanism("rp2")
    if mechanism != "acpi-pcihp":
        raise HarnessError(f"rp2 is handled by {mechanism}, not acpi-pcihp: this test is about "
                           "ACPI hotplug (q35's default)")
    if _slot_occupied(guest, "00:03.0"):
        raise HarnessError("the empty port rp2 (00:03.0) says its slot is occupied (Presence "
                           "Detect State 1 with nothing in it): not the known gap, which "
                           "reads 0 with a device in the slot")
    hp.plug(PlugSpec("hd1", "virtio-blk-pci", "rp2", 0))
    states = {"cold-plugged rp1": _slot_occupied(guest, "00:02.0"),
              "hot-plugged rp2": _slot_occupied(guest, "00:03.0")}
    assert all(states.values()), f"Presence Detect State with a device in the slot: {states}"


@pytest.mark.parametrize("how", [
    pytest.param({"acpi_hotplug": False}, id="acpi-off"),
    pytest.param({"machine": "pc-q35-6.0"}, id="pc-q35-6.0"),
])
def test_native_pcie_and_shpc_hotplug(make_guest, artifacts: Path, request, how):
    guest = make_guest(_topology(**how))
    hp = Hotplugger(guest, artifacts / "hotplug")
    buses = hp.buses()
    found = {n: buses[n].hotplug for n in ("rp1", "rp2", "ppb", "rp4")}
    assert found == {"rp1": "pcie-native", "rp2": "pcie-native", "ppb": "shpc",
                     "rp4": "none"}, found
    views = collect_views(guest, hp.topology, lspci=False)
    for n, (bus, slot, driver, mac, mechanism) in enumerate([
            ("rp1", 0, "virtio-blk-pci", None, "pcie-native"),
            ("ppb", 5, "e1000", "52:54:01:00:02:05", "shpc")]):
        report = checked_cycle(guest, hp, PlugSpec(f"hp{n}", driver, bus, slot, mac=mac),
                               SEED, views)
        _assert_clean(report)
        views = report.after_unplug
        assert report.unplugged.mechanism == mechanism
        _record(request, f"plug_s:{mechanism}", round(report.plugged.seconds, 3))
        _record(request, f"unplug_s:{mechanism}", round(report.unplugged.seconds, 3))
        # Both native mechanisms go through an attention-button press, which the
        # guest confirms only after 5 s (pciehp and shpchp alike).
        assert report.unplugged.seconds >= ATTENTION_BUTTON_S, (
            f"{mechanism} unplug took {report.unplugged.seconds:.2f} s, expected the "
            f"{ATTENTION_BUTTON_S:.0f} s attention-button wait")
    # The slot state follows the adapter: empty, occupied after the plug, empty again.
    states = [_slot_occupied(guest, "00:02.0")]
    hp.plug(PlugSpec("slot1", "virtio-blk-pci", "rp1", 0))
    states.append(_slot_occupied(guest, "00:02.0"))
    hp.unplug("slot1")
    states.append(_slot_occupied(guest, "00:02.0"))
    assert states == [False, True, False], f"rp1 Presence Detect State empty/plugged/unplugged: {states}"
    assert guest.console is not None and guest.console.trouble() == []


@pytest.mark.known_gap("acpi-hotplug-stops-at-hotplug-off-port")
@pytest.mark.parametrize("machine", ["q35"])
def test_bridges_below_a_hotplug_off_port_are_acpi_hotplugged(make_guest, machine):
    """With ACPI hotplug on, every cold-plugged bridge's bus is ACPI's, also below a
    root port with hotplug=off (found by `pci-harness explore` on 7.2.22: a switch's
    upstream port and a pci-bridge below ioh3420,hotplug=off kept their own handlers)."""
    guest = make_guest(topology_from_dict({"machine": machine, "device": [
        {"id": "rp", "driver": "ioh3420", "hotplug": "off"},
        {"id": "up", "driver": "x3130-upstream", "bus": "rp"},
        {"id": "dn", "driver": "xio3130-downstream", "bus": "up", "chassis": 5, "slot": 1},
        {"id": "rp2", "driver": "pcie-root-port", "hotplug": "off"},
        {"id": "pb", "driver": "pci-bridge", "bus": "rp2"},
        {"id": "rp3", "driver": "pcie-root-port", "hotplug": "off"},
        {"id": "ppb", "driver": "pcie-pci-bridge", "bus": "rp3"}]}))
    views = collect_views(guest, lspci=False)
    # The model says acpi-pcihp for each (topology/expect.py bus_hotplug).
    assert {f.id: f.bus_hotplug for f in views.model.functions
            if f.id in ("up", "dn", "pb", "ppb")} == dict.fromkeys(("up", "dn", "pb", "ppb"),
                                                                    "acpi-pcihp")
    others = [d for d in views.differences() if d.field != "bus_hotplug"]
    assert not others, "\n".join(str(d) for d in others)
    wrong = {d.device: d.qemu for d in views.differences() if d.field == "bus_hotplug"}
    assert not wrong, ("bridges below a hotplug=off port not ACPI-hotplugged: QEMU says "
                       f"{wrong}, the model acpi-pcihp for each")
