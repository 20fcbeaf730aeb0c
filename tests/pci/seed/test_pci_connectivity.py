"""`where` answers agree with what QEMU and the guest really do.

The answer is taken exactly as `pci-harness where` takes it (a paused QEMU,
-S, no guest); reality is then asked separately:

- every bus of the machine is either listed or excluded, and the machine's
  buses are the root bus plus one per bridge of the topology (not the QOM walk
  the answer itself came from);
- cold-plug: QEMU started with DRIVER at the first and the last free slot of
  every listed bus, and at the first slot the answer says QEMU also accepts
  (`qemu_also_accepts`), must come up, with each probe on that bus and slot in
  QOM; an occupied slot of a listed bus must be refused; a bus the answer
  leaves out because QEMU refuses it (refused_by "qemu") must be refused, and
  one it leaves out because only the PCI/PCIe rules forbid it (refused_by
  "spec") must be accepted by QEMU: "spec only" is a claim about QEMU too.
- hotplug (--hotplug): in a booted guest, device_add at every listed bus must
  succeed and the guest must see the new function (and the three views must
  agree on the grown machine); device_add on a left-out bus must be refused
  when the answer says QEMU refuses it, accepted when it says only the spec
  does, and accepted at a `qemu_also_accepts` slot.

Each check is a function returning its problems, so the tests that feed it an
answer QEMU contradicts (test_*_contradicting_qemu) see it go red.
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
from harness.guest.running import Guest
from harness.protocols import QmpEndpoint
from harness.qemu.drivers import driver_info
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.threeview import collect_views
from harness.scenarios.where import BusAnswer, Excluded, WhereAnswer, where
from harness.topology import Address, Device, Topology, load_topology
from harness.topology.render import probe_device_args
from harness.views import qom_pci_buses

pytestmark = pytest.mark.seed("pci-connectivity")
ROOT = Path(__file__).resolve().parents[3]
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


def bus_slots(qmp: QmpEndpoint) -> dict[str, dict[int, str]]:
    """{bus name: {slot: QOM path of the device there}} from the QOM tree."""
    return {b.name: {devfn >> 3: path for devfn, _, path in b.devices}
            for b in qom_pci_buses(qmp)}


def chassis_props(qmp: QmpEndpoint, driver: str) -> Callable[[int], tuple[tuple[str, int], ...]]:
    """Bridges need a unique chassis number: which property, QEMU says."""
    names = {p["name"] for p in qmp.execute("device-list-properties", {"typename": driver})}
    prop = next((p for p in ("chassis_nr", "chassis") if p in names), None)
    return lambda n: ((prop, 100 + n),) if prop else ()


def topology_buses(topology: Topology) -> list[str]:
    """The buses the topology creates: the root bus and one per bridge or port."""
    bridges = [d.id for d in topology.devices
               if (info := driver_info(d.driver)) is not None and info.bridge is not None]
    return sorted([topology.root_bus, *bridges])


def ask(factory: GuestFactory, topology: Topology, driver: str, artifacts: Path,
        hotplug: bool) -> tuple[WhereAnswer, dict[str, dict[int, str]],
                                Callable[[int], tuple[tuple[str, int], ...]]]:
    with paused(factory, topology, artifacts, "where") as guest:
        assert guest.qmp is not None
        answer = where(guest.qmp, driver, hotplug_only=hotplug,
                       root_hotplug=guest.root_bus_hotplug())
        slots = bus_slots(guest.qmp)
        chassis = chassis_props(guest.qmp, driver)
    (artifacts / f"where-{driver}{'-hotplug' if hotplug else ''}.json").write_text(
        answer.to_json())
    listed = sorted([b.bus for b in answer.buses] + [e.bus for e in answer.excluded])
    assert listed == topology_buses(topology), (
        f"every bus of the topology is listed or excluded once: answer {listed}, topology "
        f"{topology_buses(topology)}")
    return answer, slots, chassis


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no message)"])[-1]


def cold_plug_problems(factory: GuestFactory, topology: Topology, answer: WhereAnswer,
                       slots: dict[str, dict[int, str]],
                       chassis: Callable[[int], tuple[tuple[str, int], ...]],
                       artifacts: Path) -> list[str]:
    """Every claim of a cold-plug answer, tried against QEMU: [] when QEMU agrees."""
    driver = answer.driver
    problems: list[str] = []
    # Listed slots (first and last free) and the first slot QEMU "also accepts":
    # one QEMU for all; if it refuses, one QEMU per probe names the culprit.
    probes: dict[str, tuple[str, int, str]] = {}
    for bus in answer.buses:
        claims = [(s, "listed free") for s in sorted({bus.free_slots[0], bus.free_slots[-1]})]
        claims += [(s, "QEMU also accepts") for s in bus.qemu_also_accepts[:1]]
        for slot, claim in claims:
            probes[f"probe{len(probes)}"] = (bus.bus, slot, claim)

    def args(probe: str) -> tuple[str, ...]:
        bus_name, slot, _ = probes[probe]
        return probe_device_args(driver, probe, bus_name, slot, chassis(int(probe[5:]) + 1))

    if probes:
        extra = tuple(a for probe in probes for a in args(probe))
        try:
            with paused(factory, topology, artifacts, "listed", extra) as guest:
                assert guest.qmp is not None
                now: dict[str, dict[int, str]] | None = bus_slots(guest.qmp)
        except QemuExited:
            now = None
        for probe, (bus_name, slot, claim) in probes.items():
            if now is None:
                ok, why = qemu_accepts(factory, topology, artifacts, f"listed-{probe}",
                                       args(probe))
                if not ok:
                    problems.append(f"{bus_name} slot {slot:#x} ({claim}) but QEMU refuses "
                                    f"{driver} there: {_last_line(why)}")
            elif not now.get(bus_name, {}).get(slot, "").endswith(f"/{probe}"):
                problems.append(f"{bus_name} slot {slot:#x} ({claim}) but {driver} did not "
                                f"land there: {now.get(bus_name)}")

    # An occupied slot of a listed bus is refused.
    for bus in answer.buses:
        taken = sorted(set(slots[bus.bus]) - set(bus.free_slots) - set(bus.qemu_also_accepts))
        if taken:
            ok, _ = qemu_accepts(factory, topology, artifacts, f"taken-{bus.bus}",
                                 probe_device_args(driver, "probe", bus.bus, taken[0],
                                                   chassis(0)))
            if ok:
                problems.append(f"QEMU took {driver} on occupied slot {taken[0]:#x} of "
                                f"{bus.bus}")

    # A left-out bus: refused by QEMU when the answer says so; accepted when the
    # answer says only the spec forbids it.
    outcomes = []
    for ex in answer.excluded:
        slot = next(s for s in range(32) if s not in slots[ex.bus])
        ok, why = qemu_accepts(factory, topology, artifacts, f"excluded-{ex.bus}",
                               probe_device_args(driver, "probe", ex.bus, slot, chassis(0)))
        outcomes.append((ex.bus, ex.refused_by, "accepted" if ok else _last_line(why)))
        if ok and ex.refused_by == "qemu":
            problems.append(f"{ex.bus} left out as refused by QEMU ({ex.reason}) but QEMU "
                            f"took {driver} at slot {slot:#x}")
        if not ok and ex.refused_by == "spec":
            problems.append(f"{ex.bus} left out by the spec only ({ex.reason}) but QEMU "
                            f"refuses {driver} at slot {slot:#x} too: {_last_line(why)}")
    (artifacts / "excluded-outcomes.txt").write_text("\n".join(map(str, outcomes)) + "\n")
    return problems


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
    problems = cold_plug_problems(harness_factory, topology, answer, slots, chassis, artifacts)
    assert problems == [], "\n".join(problems)


def test_cold_plug_check_catches_an_answer_contradicting_qemu(harness_factory: GuestFactory,
                                                              artifacts: Path) -> None:
    """Fed a `where` answer QEMU refuses, the check names each false claim."""
    topology = topology_named("q35-pcie-to-pci")
    answer, slots, chassis = ask(harness_factory, topology, "e1000e", artifacts, hotplug=False)
    # Slot 0 of pcie.0 holds the host bridge; a listed bus is one QEMU takes e1000e on.
    listed = answer.buses[0]
    wrong = replace(answer, buses=(*answer.buses, BusAnswer("pcie.0", "pcie", (0,), None, None)),
                    excluded=(*answer.excluded, Excluded(listed.bus, "made up", "qemu")))
    problems = cold_plug_problems(harness_factory, topology, wrong, slots, chassis, artifacts)
    assert any(p.startswith("pcie.0 slot 0x0 (listed free) but QEMU refuses e1000e there:")
               for p in problems), problems
    assert any(p.startswith(f"{listed.bus} left out as refused by QEMU (made up) but QEMU "
                            "took e1000e") for p in problems), problems


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
    views = collect_views(guest, grown)
    views.save(artifacts, "after-hotplug")
    diffs = views.differences()
    assert diffs == [], "after hot-add:\n" + "\n".join(map(str, diffs))

    # A left-out bus refuses device_add when the answer says QEMU refuses it and
    # takes it when the answer says only the spec forbids it; a slot QEMU "also
    # accepts" takes it.  (After the snapshot: a device below a port at a slot
    # other than 0 is invisible to the guest, as the spec says.)
    problems: list[str] = []
    tries = [(f"neg{n}", ex.bus, next(s for s in range(32) if s not in slots[ex.bus]),
              ex.refused_by == "spec", f"left out ({ex.refused_by}: {ex.reason})")
             for n, ex in enumerate(answer.excluded)]
    tries += [(f"lenient{n}", b.bus, b.qemu_also_accepts[0], True, "QEMU also accepts")
              for n, b in enumerate(answer.buses) if b.qemu_also_accepts]
    for n, (dev_id, bus_name, slot, should_accept, claim) in enumerate(tries):
        try:
            guest.qmp.execute("device_add", {"driver": driver, "id": dev_id, "bus": bus_name,
                                             "addr": f"{slot:#x}", **dict(chassis(50 + n))})
            outcome = "accepted"
        except QmpCommandError as exc:
            outcome = f"refused: {exc.desc}"
        (artifacts / "excluded-outcomes.txt").open("a").write(
            f"{bus_name} {slot:#x} {claim}: {outcome}\n")
        if (outcome == "accepted") != should_accept:
            problems.append(f"{bus_name} slot {slot:#x} {claim}, but device_add of {driver} "
                            f"was {outcome}")
    assert problems == [], "\n".join(problems)
