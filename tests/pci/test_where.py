"""`where` answers agree with what QEMU and the guest really do.

The answer is taken exactly as `pci-harness where` takes it (a paused QEMU,
-S, no guest); reality is then asked separately:

- cold-plug: QEMU started with DRIVER at the first and the last free slot of
  every listed bus must come up, with each probe on that bus and slot in QOM;
  an occupied slot of a listed bus must be refused; a bus the answer leaves
  out must be refused too, unless the answer says only the PCI/PCIe rules
  forbid it (refused_by "spec": QEMU 7.2 cold-plugs nearly anything).
- hotplug (--hotplug): in a booted guest, device_add at every listed bus must
  succeed and the guest must see the new function (and the three views must
  agree on the grown machine); device_add on a left-out bus must be refused,
  again unless the answer marks the exclusion as the spec's only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import QemuExited
from harness.factory import GuestFactory
from harness.machine import Guest
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.where import WhereAnswer, where
from harness.topology import Address, Device, Topology, load_topology
from harness.topology.render import probe_device_args
from harness.views import Qmp, qom_pci_buses
from harness.views.threeview import snapshot

pytestmark = pytest.mark.seed("pci-connectivity")
ROOT = Path(__file__).resolve().parents[2]
HOT_ADD_SECONDS = 20.0  # SHPC waits out its 5 s attention-button delay


def topology_named(name: str) -> Topology:
    return load_topology(ROOT / "topologies" / f"{name}.toml")


@contextlib.contextmanager
def paused(factory: GuestFactory, topology: Topology, artifacts: Path, name: str,
           extra: tuple[str, ...] = ()) -> Iterator[Guest]:
    """QEMU with the topology (plus EXTRA arguments) stopped before the firmware."""
    guest = Guest(factory.plan(topology, boot_guest=False, extra_args=("-S", *extra)),
                  artifacts / name, name=name)
    try:
        guest.launch()
        yield guest
    finally:
        guest.shutdown()


def qemu_accepts(factory: GuestFactory, topology: Topology, artifacts: Path, name: str,
                 extra: tuple[str, ...]) -> tuple[bool, str]:
    """(QEMU came up with EXTRA, its complaint if not)."""
    try:
        with paused(factory, topology, artifacts, name, extra):
            return True, ""
    except QemuExited as exc:
        return False, exc.stderr.strip()


def bus_slots(qmp: Qmp) -> dict[str, dict[int, str]]:
    """{bus name: {slot: QOM path of the device there}} from the QOM tree."""
    return {b.name: {devfn >> 3: path for devfn, _, path in b.devices}
            for b in qom_pci_buses(qmp)}


def chassis_props(qmp: Qmp, driver: str) -> Callable[[int], tuple[tuple[str, int], ...]]:
    """Bridges need a unique chassis number: which property, QEMU says."""
    names = {p["name"] for p in qmp.execute("device-list-properties", {"typename": driver})}
    prop = next((p for p in ("chassis_nr", "chassis") if p in names), None)
    return lambda n: ((prop, 100 + n),) if prop else ()


def ask(factory: GuestFactory, topology: Topology, driver: str, artifacts: Path,
        hotplug: bool) -> tuple[WhereAnswer, dict[str, dict[int, str]],
                                Callable[[int], tuple[tuple[str, int], ...]]]:
    with paused(factory, topology, artifacts, "where") as guest:
        assert guest.qmp is not None
        answer = where(guest.qmp, driver, hotplug_only=hotplug)
        slots = bus_slots(guest.qmp)
        chassis = chassis_props(guest.qmp, driver)
    (artifacts / f"where-{driver}{'-hotplug' if hotplug else ''}.json").write_text(
        answer.to_json())
    listed = sorted([b.bus for b in answer.buses] + [e.bus for e in answer.excluded])
    assert listed == sorted(slots), f"every bus is listed or excluded: {listed} vs {sorted(slots)}"
    return answer, slots, chassis


COLD_CASES = [
    ("q35-pcie-to-pci", "e1000e"),
    ("q35-pcie-to-pci", "pcie-root-port"),
    ("q35-pcie-to-pci", "xio3130-downstream"),
    ("q35-native-hotplug", "pci-bridge"),
    ("pc-nested-bridges", "e1000"),
    ("pc-nested-bridges", "pcie-root-port"),
]


@pytest.mark.parametrize(("name", "driver"), COLD_CASES, ids=[f"{n}-{d}" for n, d in COLD_CASES])
def test_cold_plug_answers_match_qemu(harness_factory: GuestFactory, artifacts: Path,
                                      name: str, driver: str) -> None:
    topology = topology_named(name)
    answer, slots, chassis = ask(harness_factory, topology, driver, artifacts, hotplug=False)

    # Every listed bus takes DRIVER at its first and last free slot: one QEMU for all.
    probes: dict[str, tuple[str, int]] = {}
    extra: list[str] = []
    for bus in answer.buses:
        for slot in sorted({bus.free_slots[0], bus.free_slots[-1]}):
            probe = f"probe{len(probes)}"
            probes[probe] = (bus.bus, slot)
            extra += probe_device_args(driver, probe, bus.bus, slot, chassis(len(probes)))
    if probes:
        with paused(harness_factory, topology, artifacts, "listed", tuple(extra)) as guest:
            assert guest.qmp is not None
            now = bus_slots(guest.qmp)
        for probe, (bus_name, slot) in probes.items():
            assert now[bus_name].get(slot, "").endswith(f"/{probe}"), (probe, bus_name, slot,
                                                                       now[bus_name])

    # An occupied slot of a listed bus is refused.
    for bus in answer.buses:
        taken = sorted(set(slots[bus.bus]) - set(bus.free_slots))
        if taken:
            ok, why = qemu_accepts(harness_factory, topology, artifacts, f"taken-{bus.bus}",
                                   probe_device_args(driver, "probe", bus.bus, taken[0],
                                                     chassis(0)))
            assert not ok, f"QEMU took {driver} on occupied slot {taken[0]:#x} of {bus.bus}"

    # A left-out bus is refused by QEMU, or the answer says only the spec forbids it.
    outcomes = []
    for ex in answer.excluded:
        slot = next(s for s in range(32) if s not in slots[ex.bus])
        ok, why = qemu_accepts(harness_factory, topology, artifacts, f"excluded-{ex.bus}",
                               probe_device_args(driver, "probe", ex.bus, slot, chassis(0)))
        outcomes.append((ex.bus, ex.refused_by, "accepted" if ok else why.splitlines()[-1]))
        assert not ok or ex.refused_by == "spec", (
            f"{ex.bus} left out ({ex.reason}) but QEMU took {driver} at slot {slot:#x}")
    (artifacts / "excluded-outcomes.txt").write_text("\n".join(map(str, outcomes)) + "\n")


HOT_CASES = [
    ("pc-nested-bridges", "e1000"),       # ACPI BSEL on pci.0 and every bridge
    ("q35-native-hotplug", "e1000e"),     # SHPC on pcie-pci-bridge; pcie.0, hotplug=off
    ("q35-pcie-to-pci", "virtio-net-pci"),  # ACPI PCI hotplug (q35) behind bridges
]


def _find(devices: list[dict[str, Any]], qdev_id: str) -> dict[str, Any] | None:
    for d in devices:
        if d.get("qdev_id") == qdev_id:
            return d
        found = _find(d.get("pci_bridge", {}).get("devices", []), qdev_id)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(("name", "driver"), HOT_CASES, ids=[f"{n}-{d}" for n, d in HOT_CASES])
def test_hotplug_answers_match_reality(harness_factory: GuestFactory,
                                       make_guest: Callable[..., Guest], artifacts: Path,
                                       name: str, driver: str) -> None:
    topology = topology_named(name)
    answer, slots, chassis = ask(harness_factory, topology, driver, artifacts, hotplug=True)
    assert answer.buses, f"{driver}: no hotplug bus in {name}"
    guest = make_guest(topology)
    assert guest.qmp is not None
    added: list[Device] = []
    for bus in answer.buses:
        dev = Device(id=f"hp{len(added)}", driver=driver, bus=bus.bus,
                     addr=Address(bus.free_slots[0]))
        started = time.monotonic()
        guest.qmp.execute("device_add", {"driver": driver, "id": dev.id, "bus": bus.bus,
                                         "addr": f"{bus.free_slots[0]:#x}"})
        found = _find(guest.qmp.execute("query-pci")[0]["devices"], dev.id)
        assert found is not None, f"{dev.id} on {bus.bus}: not in query-pci after device_add"
        bdf = f"0000:{found['bus']:02x}:{found['slot']:02x}.{found['function']}"
        # The guest sees it and binds a driver (the model predicts one for DRIVER; the
        # guest loads its module by modalias on the hotplug uevent).
        guest.wait_until_succeeds(f"test -e /sys/bus/pci/devices/{bdf}/driver",
                                  timeout=HOT_ADD_SECONDS)
        (artifacts / "hot-add.txt").open("a").write(
            f"{dev.id} {bus.bus} {bus.hotplug} {bdf} {time.monotonic() - started:.2f} s\n")
        added.append(dev)

    # The three views agree on the machine as it is now.
    grown = replace(topology, devices=topology.devices + tuple(added))
    views = snapshot(guest, grown)
    views.save(artifacts, "after-hotplug")
    diffs = views.differences()
    assert diffs == [], "after hot-add:\n" + "\n".join(map(str, diffs))

    # A left-out bus refuses device_add, or the answer says only the spec forbids it.
    for n, ex in enumerate(answer.excluded):
        slot = next(s for s in range(32) if s not in slots[ex.bus])
        try:
            guest.qmp.execute("device_add", {"driver": driver, "id": f"neg{n}", "bus": ex.bus,
                                             "addr": f"{slot:#x}", **dict(chassis(n))})
            accepted = True
        except QmpCommandError:
            accepted = False
        assert not accepted or ex.refused_by == "spec", (
            f"{ex.bus} left out ({ex.reason}) but device_add of {driver} succeeded")
