"""compare --json: `differences` lists only unexpected results; a difference a known
QEMU gap explains on the QEMU under test goes under `known_failures` (recorded
views, a table entry made for the test: no QEMU)."""

from __future__ import annotations

from dataclasses import replace

from test_threeview import ROOT, recorded

from harness.cli.topology import compare_result, known_gap_of
from harness.qemu import known
from harness.qemu.gap import KnownGap, Measurement
from harness.qemu.known import gap_for_difference
from harness.qemu.ranges import VersionRange
from harness.qemu.signature import Shows
from harness.scenarios.threeview import ThreeViews

# As if QEMU before 10.0 reported the pci-bridge's secondary bus handled by nothing.
GAP = KnownGap(id="fake-bridge-hotplug", seed="bridge-hotplug-acpi-bsel",
               does_instead="the pci-bridge's bus has no hotplug handler", spec="ACPI BSEL",
               versions=VersionRange((7, 2), fixed=(10, 0)), tests=("test_x",),
               evidence=(Measurement("7.2.22", "fails", ("q35",)),),
               shows=(Shows("bus_hotplug", "pci-bridge", "none"),))


def mutated(views: ThreeViews, device: str, **fields: object) -> ThreeViews:
    """QEMU's view with `fields` of `device` changed (the guest agrees with the model)."""
    functions = tuple(replace(f, **fields) if f.id == device else f  # type: ignore[arg-type]
                      for f in views.qemu.functions)
    return replace(views, qemu=replace(views.qemu, functions=functions))


def result_on(version: str, views: ThreeViews, monkeypatch) -> dict:
    from harness.topology import load_topology

    monkeypatch.setattr(known, "KNOWN_GAPS", known.KNOWN_GAPS + (GAP,))
    topology = load_topology(ROOT / "topologies" / "q35-pcie-to-pci.toml")
    return compare_result(views, [], known_gap_of(topology, version, "pc-q35-7.2"))


def test_known_gap_goes_to_known_failures_and_the_rest_stays_a_difference(monkeypatch):
    views = mutated(recorded("q35-pcie-to-pci"), "pb1", bus_hotplug="none")
    views = mutated(views, "nic0", subsystem=0x1234)
    result = result_on("7.2.22", views, monkeypatch)
    assert [(d["device"], d["field"]) for d in result["differences"]] == [("nic0", "subsystem")]
    assert result["known_failures"] == [{
        "device": "pb1", "field": "bus_hotplug", "model": "acpi-pcihp", "qemu": "none",
        "guest": None, "gap": "fake-bridge-hotplug", "seed": "bridge-hotplug-acpi-bsel",
        "reason": "bridge-hotplug-acpi-bsel: the pci-bridge's bus has no hotplug handler"}]
    assert result["ok"] is False and len(result["failures"]) == 1
    assert result["failures"][0].startswith("nic0: subsystem:")


def test_only_known_gaps_is_ok(monkeypatch):
    views = mutated(recorded("q35-pcie-to-pci"), "pb1", bus_hotplug="none")
    result = result_on("7.2.22", views, monkeypatch)
    assert (result["ok"], result["differences"], result["failures"]) == (True, [], [])
    assert [k["gap"] for k in result["known_failures"]] == ["fake-bridge-hotplug"]


def test_outside_the_range_the_same_difference_is_unexpected(monkeypatch):
    views = mutated(recorded("q35-pcie-to-pci"), "pb1", bus_hotplug="none")
    result = result_on("10.0.2", views, monkeypatch)
    assert result["known_failures"] == [] and result["ok"] is False
    assert [(d["device"], d["field"]) for d in result["differences"]] == [("pb1", "bus_hotplug")]


def test_a_gap_matches_its_driver_field_and_value_only():
    lookup = [
        gap_for_difference("pci-bridge", "bus_hotplug", "none", (7, 2), "pc-q35-7.2", (GAP,)),
        gap_for_difference("pcie-pci-bridge", "bus_hotplug", "none", (7, 2), "pc-q35-7.2",
                           (GAP,)),
        gap_for_difference("pci-bridge", "bus_hotplug", "shpc", (7, 2), "pc-q35-7.2", (GAP,)),
        gap_for_difference("pci-bridge", "prog_if", "none", (7, 2), "pc-q35-7.2", (GAP,)),
    ]
    assert lookup == [GAP, None, None, None]


def test_with_no_difference_there_is_nothing_known():
    result = compare_result(recorded("q35-pcie-to-pci"), [])
    assert (result["ok"], result["differences"], result["known_failures"]) == (True, [], [])


def _bridge_below(port_hotplug: str | None):
    from harness.topology import topology_from_dict

    port = {"id": "rp1", "driver": "ioh3420"} | ({"hotplug": port_hotplug} if port_hotplug
                                                 else {})
    return topology_from_dict({"machine": "q35", "device": [
        port, {"id": "up1", "driver": "x3130-upstream", "bus": "rp1"},
        {"id": "dn1", "driver": "xio3130-downstream", "bus": "up1", "chassis": 3, "slot": 0},
        {"id": "pb1", "driver": "pci-bridge", "bus": "dn1", "chassis_nr": 4},
        {"id": "top", "driver": "pci-bridge", "chassis_nr": 5}]})


def test_ancestors_are_the_devices_above_nearest_first():
    topology = _bridge_below("off")
    assert [d.id for d in topology.ancestors("pb1")] == ["dn1", "up1", "rp1"]
    assert topology.ancestors("top") == () and topology.ancestors("rp1") == ()
    assert topology.ancestors("no-such-device") == ()


def test_the_hotplug_off_port_gap_explains_a_bridge_only_below_such_a_port():
    """The gap's Shows say where it shows (below=("hotplug", False)): the same SHPC
    handler on a bridge anywhere else is an unexpected difference (it was taken
    for this gap when Shows matched by driver and value alone)."""
    from harness.qemu.facts import parse_version

    v722, v1002 = parse_version("7.2.22"), parse_version("10.0.2")

    def gap(topology, device: str, driver: str, handler: str, version=v722):
        found = gap_for_difference(driver, "bus_hotplug", handler, version, "pc-q35-7.2",
                                   ancestors=topology.ancestors(device))
        return found.id if found else None

    below_off, below_on, nothing = _bridge_below("off"), _bridge_below("on"), _bridge_below(None)
    want = "acpi-hotplug-stops-at-hotplug-off-port"
    assert gap(below_off, "pb1", "pci-bridge", "shpc") == want
    assert gap(below_off, "dn1", "xio3130-downstream", "pcie-native") == want
    assert gap(below_off, "up1", "x3130-upstream", "none") == want
    assert gap(below_off, "pb1", "pci-bridge", "shpc", v1002) is None   # fixed in 10.0
    assert gap(below_off, "top", "pci-bridge", "shpc") is None          # not below the port
    assert gap(below_on, "pb1", "pci-bridge", "shpc") is None
    assert gap(nothing, "pb1", "pci-bridge", "shpc") is None
