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
