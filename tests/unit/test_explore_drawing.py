"""The exploration without QEMU: strategies, draws, shrinking, cases, the loop."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from harness.errors import TopologyError, UserError
from harness.qemu import drivers
from harness.scenarios.explore import draws
from harness.scenarios.explore.case import adopt, case_toml, load_case, topology_toml
from harness.scenarios.explore.check import Outcome, placement_problems, same_failure
from harness.scenarios.explore.draws import Space, draw, first_index
from harness.scenarios.explore.run import Budget, Explorer
from harness.scenarios.explore.shrink import shrink
from harness.scenarios.explore.strategies import machines
from harness.topology import expected_view, topology_from_dict
from harness.topology.data import Topology
from harness.topology.placement import validate


def depth(topo: Topology) -> int:
    deepest = 0
    for dev in topo.devices:
        d, cur = 1, dev
        while cur.bus is not None:
            d, cur = d + 1, topo.device(cur.bus)
        deepest = max(deepest, d)
    return deepest


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(machines())
def test_every_drawn_machine_is_valid_by_the_model(topology: Topology) -> None:
    validate(topology)  # raises TopologyError for a strategy bug
    expected_view(topology)  # and the model can say what the guest should see


def test_draws_cover_the_scope() -> None:
    """Over one seed's first 400 draws: both machine kinds, every table driver
    that can be placed, nesting 4 deep, multifunction, chosen and automatic
    addresses, ACPI hotplug off, properties of every family."""
    topos = [draw(3, i) for i in range(400)]
    devs = [d for t in topos for d in t.devices]
    assert {t.kind for t in topos} == {"pc", "q35"}
    assert {d.driver for d in devs} >= set(drivers.DRIVERS) - {"xio3130-downstream"}
    assert max(depth(t) for t in topos) >= 4
    assert any(d.addr is not None and d.addr.function > 0 for d in devs)
    assert any(d.addr is None for d in devs) and any(d.addr is not None for d in devs)
    assert any(not t.acpi_hotplug for t in topos)
    assert any(d.disk is not None for d in devs)


def test_props_are_drawn_only_where_qemu_has_them() -> None:
    props = {"pcie-root-port": frozenset({"hotplug", "x-speed", "x-width", "chassis", "slot"}),
             "virtio-net-pci": frozenset({"disable-legacy", "vectors"})}
    space = Space.of(props, ("2_5", "5"))
    topos = [draw(5, i, space) for i in range(400)]
    devs = [d for t in topos for d in t.devices]
    assert {d.driver for d in devs} <= set(props)
    speeds = {d.prop("x-speed") for d in devs} - {None}
    assert speeds and speeds <= {"2_5", "5"}
    assert any(d.prop("hotplug") == "off" for d in devs)
    assert any(d.prop("vectors") == 0 for d in devs)
    assert not any(d.prop("disable-modern") is not None for d in devs)  # not offered


def test_a_driver_added_to_the_table_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = replace(drivers.DRIVERS["e1000e"], driver="nvme-fake")
    monkeypatch.setitem(drivers.DRIVERS, "nvme-fake", fake)
    draws._batch.cache_clear()
    try:
        drawn = {d.driver for i in range(300) for d in draw(9, i).devices}
    finally:
        draws._batch.cache_clear()
    assert "nvme-fake" in drawn


def test_the_same_seed_draws_the_same_machines_and_another_seed_others() -> None:
    first = [draw(21, i).cache_key() for i in range(250)]
    draws._batch.cache_clear()
    assert [draw(21, i).cache_key() for i in range(250)] == first
    assert [draw(22, i).cache_key() for i in range(250)] != first


def test_a_repeated_machine_names_its_first_index() -> None:
    keys = [draw(4, i).cache_key() for i in range(400)]
    dup = next(i for i in range(1, 400) if keys[i] in keys[:i])
    assert first_index(4, dup) == keys.index(keys[dup]) < dup
    new = next(i for i in range(400) if keys[i] not in keys[:i])
    assert first_index(4, new) == new


# --------------------------------------------------------------------------- shrinking

BIG = topology_from_dict({"machine": "pc-q35-7.2", "acpi_hotplug": False, "device": [
    {"id": "rp1", "driver": "pcie-root-port", "hotplug": "off"},
    {"id": "up", "driver": "x3130-upstream", "bus": "rp1"},
    {"id": "dn", "driver": "xio3130-downstream", "bus": "up", "addr": "0.0"},
    {"id": "br", "driver": "pcie-pci-bridge", "bus": "dn"},
    {"id": "rng", "driver": "virtio-rng-pci", "bus": "br", "addr": "3.0", "vectors": 3},
    {"id": "n1", "driver": "e1000", "addr": "5.0"},
    {"id": "n2", "driver": "e1000e", "addr": "6.0", "multifunction": "on"},
    {"id": "n3", "driver": "e1000", "addr": "6.1"},
]})


class FakeCheck:
    """Fails like a QEMU that breaks every virtio-rng-pci's vectors."""

    def __init__(self, broken: str | None = "virtio-rng-pci") -> None:
        self.broken = broken
        self.calls = 0

    def __call__(self, topo: Topology) -> Outcome:
        self.calls += 1
        bad = [d for d in topo.devices if d.driver == self.broken]
        if not bad:
            return Outcome(topo, "agree", seconds=2.0)
        return Outcome(topo, "differs", tuple(
            {"device": d.id, "driver": d.driver, "field": "msix_table_size", "model": 3,
             "qemu": None, "guest": 5, "text": f"{d.id}: msix_table_size"} for d in bad),
            seconds=3.0)


def test_shrinking_keeps_the_failure_and_drops_everything_else() -> None:
    check = FakeCheck()
    failing = check(BIG)
    shrunk = shrink(check, failing)
    assert shrunk.complete
    assert [d.driver for d in shrunk.outcome.topology.devices] == ["virtio-rng-pci"]
    assert shrunk.outcome.topology.devices[0].props == ()
    assert shrunk.outcome.topology.acpi_hotplug and shrunk.outcome.topology.machine == "q35"
    assert same_failure(failing.signature, shrunk.outcome)
    assert shrunk.evaluations <= 20, shrunk.evaluations


def test_shrinking_a_failure_that_needs_two_devices_keeps_both() -> None:
    def check(topo: Topology) -> Outcome:
        nics = [d for d in topo.devices if d.driver.startswith("e1000")]
        kind = "refused" if len(nics) >= 2 else "agree"
        return Outcome(topo, kind, ({"device": "", "driver": "e1000", "field": "x"},)
                       if kind == "refused" else ())
    shrunk = shrink(check, check(BIG))
    assert sorted(d.driver for d in shrunk.outcome.topology.devices)[:2] in (
        ["e1000", "e1000"], ["e1000", "e1000e"])
    assert len(shrunk.outcome.topology.devices) == 2


def test_shrinking_stops_at_the_budget() -> None:
    shrunk = shrink(FakeCheck(), FakeCheck()(BIG), max_evaluations=1)
    assert not shrunk.complete and shrunk.evaluations == 1


def test_another_failure_is_not_the_same_failure() -> None:
    rng = FakeCheck()(BIG)
    other = FakeCheck("e1000")(BIG)
    assert not same_failure(rng.signature, other)
    assert not same_failure(rng.signature, FakeCheck(None)(BIG))
    assert same_failure(rng.signature, rng)


# --------------------------------------------------------------------------- cases

def test_topology_toml_reads_back_as_the_same_machine() -> None:
    again = topology_from_dict(tomllib.loads(topology_toml(BIG)))
    assert again.cache_key() == BIG.cache_key()


def test_a_case_saves_loads_and_is_adopted_with_its_expectation(tmp_path: Path) -> None:
    outcome = FakeCheck()(BIG)
    path = tmp_path / "case.toml"
    path.write_text(case_toml(outcome, {"kind": "differs", "qemu": "7.2.22", "seed": 1,
                                        "signature": sorted(map(list, outcome.signature)),
                                        "replay": "pci-harness explore --replay X"}))
    case = load_case(path)
    assert case.topology.cache_key() == BIG.cache_key()
    assert case.signature == outcome.signature
    assert case.expected("7.2.22") is None
    out = adopt(path, tmp_path / "explored", "7.2.22", "fails")
    out = adopt(out, tmp_path / "explored", "10.0.2", "passes")  # re-adopting keeps both
    adopted = load_case(out)
    assert (adopted.expected("7.2.9"), adopted.expected("10.0.2")) == ("fails", "passes")
    assert adopted.expected("9.2.0") is None
    with pytest.raises(UserError, match="expected outcome"):
        adopt(path, tmp_path, "7.2.22", "maybe")


def test_a_plain_topology_is_not_a_case(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(topology_toml(BIG))
    with pytest.raises(UserError, match="no \\[explore\\] table"):
        load_case(path)


def test_the_topology_loader_ignores_the_explore_table_only() -> None:
    topology_from_dict({"machine": "q35", "explore": {"kind": "differs"}})
    with pytest.raises(TopologyError, match="unknown top-level"):
        topology_from_dict({"machine": "q35", "explored": {}})


# --------------------------------------------------------------------------- placement probe

def _answer(bus: str, slots: list[int]) -> dict[str, Any]:
    return {"driver": "e1000", "buses": [{"bus": bus, "kind": "pcie", "free_slots": slots}]}


def test_a_placement_where_lists_and_the_model_refuses_is_a_problem() -> None:
    topo = topology_from_dict({"machine": "q35"})
    assert placement_problems(topo, _answer("pcie.0", [2, 0x1D])) == []
    # 0x1f is the LPC's slot: where never lists it; fed it, the check reports it.
    problems = placement_problems(topo, _answer("pcie.0", [2, 0x1F]))
    assert [p["device"] for p in problems] == ["e1000@pcie.0:0x1f"]
    assert problems[0]["where"] == "allowed" and problems[0]["model"] == "refused"


# --------------------------------------------------------------------------- the loop

def test_the_loop_counts_dedups_shrinks_once_and_reports(tmp_path: Path) -> None:
    check = FakeCheck()
    explorer = Explorer(check, seed=3, budget=Budget(examples=40), space=Space(),
                        qemu_version="7.2.22", qemu_binary="/q", save_dir=tmp_path,
                        replay_command="pci-harness explore --replay {file}",
                        use_database=False)
    report = explorer.run().to_dict()
    assert report["examples"] == 40 == report["distinct_topologies"]
    assert set(report["per_topology_s"]) == {"p50", "p95"}
    assert len(report["failures"]) == 1 and report["ok"] is False
    failure = report["failures"][0]
    assert failure["devices"] == 1 and failure["repeats"] >= 1
    assert failure["replay"] == f"pci-harness explore --replay {failure['saved']}"
    assert load_case(Path(failure["saved"])).topology.devices[0].driver == "virtio-rng-pci"
    assert {"difference", "saved", "replay", "devices"} <= set(failure)


def test_a_loop_with_no_failure_is_ok(tmp_path: Path) -> None:
    explorer = Explorer(FakeCheck(None), seed=3, budget=Budget(examples=5), space=Space(),
                        qemu_version="7.2.22", qemu_binary="/q", save_dir=tmp_path,
                        replay_command="x", use_database=False)
    report = explorer.run().to_dict()
    assert report["ok"] is True and report["failures"] == []


# --------------------------------------------------------------------------- model facts found

def test_model_facts_explore_found() -> None:
    def fn(machine: str, dev: dict[str, object], name: str = "d") -> Any:
        return expected_view(topology_from_dict({"machine": machine, "device": [dev]})
                             ).function(name)
    assert fn("pc-i440fx-5.2", {"id": "d", "driver": "e1000"}, "mgmt").msix_table_size == 3
    assert fn("pc-i440fx-6.2", {"id": "d", "driver": "e1000"}, "mgmt").msix_table_size == 4
    old_rng = fn("pc-q35-7.1", {"id": "d", "driver": "virtio-rng-pci"})
    assert "msix" not in old_rng.capabilities and old_rng.msix_table_size is None
    assert fn("pc-q35-7.2", {"id": "d", "driver": "virtio-rng-pci"}).msix_table_size == 2
    ioh = fn("q35", {"id": "d", "driver": "ioh3420"})
    assert (ioh.link_cap_speed, ioh.link_cap_width, ioh.subsystem_vendor) == (2.5, 1, 0x8086)


def test_machine_types_before_4_0_are_refused_before_qemu() -> None:
    from harness.factory import check_kernel_boot

    with pytest.raises(UserError, match="PVH"):
        check_kernel_boot(topology_from_dict({"machine": "pc-q35-3.1"}))
    check_kernel_boot(topology_from_dict({"machine": "pc-q35-4.0"}))


def test_a_machine_with_two_faults_is_shrunk_for_the_first() -> None:
    def check(topo: Topology) -> Outcome:
        problems = tuple({"device": d.id, "driver": d.driver, "field": "f"}
                         for d in topo.devices if d.driver in ("e1000", "virtio-rng-pci"))
        return Outcome(topo, "differs" if problems else "agree", problems)
    failing = check(BIG)
    first = failing.problems[0]["driver"]
    shrunk = shrink(check, failing)
    assert [d.driver for d in shrunk.outcome.topology.devices] == [first]


def test_model_rules_explore_found() -> None:
    with pytest.raises(TopologyError, match="needs a disk"):
        topology_from_dict({"device": [{"id": "b", "driver": "virtio-blk-pci"}]})
    topology_from_dict({"device": [{"id": "b", "driver": "virtio-blk-pci", "drive": "x"}]})
    on_root = expected_view(topology_from_dict({"device": [{"id": "n", "driver": "e1000e"}]}))
    assert on_root.function("n").pcie_type == "rc-endpoint"
    on_pc = expected_view(topology_from_dict({"machine": "pc", "device": [
        {"id": "n", "driver": "e1000e"}]}))
    assert on_pc.function("n").pcie_type == "endpoint"


def test_shrinking_a_function_of_a_multifunction_slot_takes_one_boot() -> None:
    check = FakeCheck("e1000")
    failing = check(replace(BIG, devices=tuple(d for d in BIG.devices if d.id != "n1")))
    shrunk = shrink(check, failing)
    assert [d.driver for d in shrunk.outcome.topology.devices] == ["e1000"]
    assert shrunk.evaluations <= 8, shrunk.evaluations


def test_the_budget_is_shared_through_a_stamp(tmp_path: Path) -> None:
    import os
    import time

    from harness.scenarios.explore.session import budget_left

    stamp = tmp_path / "stamp"
    assert budget_left(stamp, None) and not stamp.exists()
    assert budget_left(stamp, 1.0) and stamp.exists()  # the first caller starts it
    old = time.time() - 120
    os.utime(stamp, (old, old))
    assert not budget_left(stamp, 1.0)  # started two minutes ago by another worker
    assert budget_left(stamp, 3.0)


def test_the_nightly_passes_the_exploration_budget() -> None:
    import argparse

    from harness.cli.nightly import explore_argv

    assert explore_argv(argparse.Namespace(explore_minutes=0.0, explore_seed=3)) == [
        "--explore-seed=3"]
    assert explore_argv(argparse.Namespace(explore_minutes=0.0, explore_seed=1)) == []
    argv = explore_argv(argparse.Namespace(explore_minutes=2.0, explore_seed=1))
    assert argv == ["--explore-seed=1", "--explore-minutes=2.0", "--explore-examples=60"]


def test_pci_bridge_without_shpc_has_no_msi_and_no_interrupt_pin() -> None:
    view = expected_view(topology_from_dict({"machine": "pc", "device": [
        {"id": "b", "driver": "pci-bridge", "shpc": "off"}, {"id": "c", "driver": "pci-bridge"}]}))
    off, on = view.function("b"), view.function("c")
    assert (off.interrupt_pin, off.capabilities) == (0, ("slotid",))
    assert (on.interrupt_pin, on.capabilities) == (1, ("msi", "shpc", "slotid"))


def test_the_placement_probe_never_asks_about_a_driver_that_needs_a_drive() -> None:
    from harness.scenarios.explore.run import probe_driver_for

    choose = probe_driver_for(tuple(drivers.DRIVERS.values()))
    asked = {choose(draw(2, i)) for i in range(200)}
    assert "virtio-blk-pci" not in asked and len(asked) > 5


def test_shards_of_one_seed_boot_disjoint_machines(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    for k in range(2):
        booted: list[str] = []

        def check(topo: Topology, booted: list[str] = booted) -> Outcome:
            booted.append(topo.cache_key())
            return Outcome(topo, "agree")
        Explorer(check, seed=8, budget=Budget(examples=15), space=Space(), qemu_version="7.2",
                 qemu_binary="/q", save_dir=None, replay_command="", shard=(k, 2),
                 use_database=False).run()
        seen.append(booted)
    assert not set(seen[0]) & set(seen[1])


def test_slot_0_of_a_bus_its_shpc_controller_hotplugs_is_refused() -> None:
    def topo(machine: str, acpi: bool, shpc: str = "on") -> dict[str, Any]:
        return {"machine": machine, "acpi_hotplug": acpi, "device": [
            {"id": "b", "driver": "pci-bridge", "shpc": shpc},
            {"id": "n", "driver": "e1000", "bus": "b", "addr": "0.0"}]}
    with pytest.raises(TopologyError, match="QEMU refuses slot 0"):
        topology_from_dict(topo("pc", False))
    with pytest.raises(TopologyError, match="QEMU refuses slot 0"):
        topology_from_dict({"machine": "pc-q35-4.0", "device": [
            {"id": "b", "driver": "pcie-pci-bridge"},
            {"id": "n", "driver": "e1000", "bus": "b", "addr": "0.0"}]})
    topology_from_dict(topo("pc", True))            # ACPI handles the bus
    topology_from_dict(topo("pc", False, "off"))    # no SHPC at all


def test_legacy_only_virtio_behind_a_port_has_no_pcie_capability() -> None:
    view = expected_view(topology_from_dict({"machine": "q35", "device": [
        {"id": "rp", "driver": "pcie-root-port"},
        {"id": "r", "driver": "virtio-rng-pci", "bus": "rp", "disable-legacy": "off",
         "disable-modern": "on"}]}))
    rng = view.function("r")
    assert (rng.pcie_type, rng.capabilities) == ("", ("msix",))
    port = view.function("rp")  # no link to train: its own maximum, as if empty
    assert (port.link_speed, port.link_width) == (port.link_cap_speed, port.link_cap_width)


def test_a_refusal_for_the_same_reason_is_the_same_failure_whatever_the_driver() -> None:
    def refused(driver: str, why: str) -> Outcome:
        return Outcome(BIG, "refused", ({"device": "x", "driver": driver, "field": why},))
    assert same_failure(refused("e1000", "slot 0").signature, refused("e1000e", "slot 0"))
    assert not same_failure(refused("e1000", "slot 0").signature, refused("e1000", "other"))


def test_nvme_on_older_machine_types() -> None:
    def nvme(machine: str) -> Any:
        return expected_view(topology_from_dict({"machine": machine, "device": [
            {"id": "n", "driver": "nvme", "disk": "4M"}]})).function("n")
    old, mid, new = nvme("pc-q35-5.1"), nvme("pc-q35-5.2"), nvme("pc-q35-6.0")
    assert (old.vendor, old.device) == (0x8086, 0x5845)
    assert (mid.vendor, mid.device) == (new.vendor, new.device) == (0x1B36, 0x0010)
    assert [(b.index, b.size) for b in mid.bars or ()] == [(0, 8192), (4, 4096)]
    assert [(b.index, b.size) for b in new.bars or ()] == [(0, 16384)]
