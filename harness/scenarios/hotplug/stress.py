"""N plug/unplug cycles into slots behind bridges, every step checked three ways.

One cycle: a disk (even cycles) or a NIC (odd cycles) goes into a bus and slot
drawn from the seed among the places the where-oracle allows for hot-add behind
a bridge (scenarios/where.py, from QOM); the guest must see it, the data or MAC
must round-trip, the three-view diff must show exactly the device (and what the
model derives from it), then device_del, DEVICE_DELETED, and the same checks
for its removal.  The same seed gives the same sequence.

Time is booked per category so the harness's own cost is visible: `event`
(waiting for the guest to bind the device and for DEVICE_DELETED), `guest`
(SSH commands: modules, data, the sysfs dump), `qmp` (commands and the QOM
walk) and the remainder, which is the harness itself (parsing, modelling,
diffing, bookkeeping).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.guest.running import Guest
from harness.progress import Progress
from harness.qemu.machines import MACHINES, MachineFacts
from harness.scenarios.hotplug.check import step_problems
from harness.scenarios.hotplug.io import host_block_ok
from harness.scenarios.hotplug.plug import (
    Hotplugger,
    Plugged,
    PlugSpec,
    Unplugged,
    kind_of,
    seeded_mac,
)
from harness.scenarios.threeview import ThreeViews, collect_views
from harness.scenarios.where import where
from harness.topology import Topology, topology_from_dict

__all__ = ["CycleFailure", "CycleReport", "StepFailed", "StressResult", "candidate_slots", "checked_cycle", "run_stress",
           "stress_topology"]

NIC_DRIVERS = ("virtio-net-pci",)  # and each machine's own (machines.MachineFacts.hotplug_nics)


def nic_drivers(machine: MachineFacts) -> tuple[str, ...]:
    """The NIC drivers hot-plugged on MACHINE, in the order the seeded choice uses."""
    return (*NIC_DRIVERS, *machine.hotplug_nics)
DISK_DRIVER = "virtio-blk-pci"

# Bridges get a cold-plugged function each, so they have windows whatever the
# firmware: qboot opens none for an empty bridge (the guest then cannot assign
# the BARs of a hot-added device: "no space"), SeaBIOS reserves some.
_STRESS: dict[str, dict[str, Any]] = {
    "pc": {"machine": "pc", "device": [
        {"id": "br1", "driver": "pci-bridge", "addr": "4.0", "chassis_nr": 1},
        {"id": "br2", "driver": "pci-bridge", "bus": "br1", "addr": "1.0", "chassis_nr": 2},
        {"id": "br3", "driver": "pci-bridge", "bus": "br2", "addr": "1.0", "chassis_nr": 3},
        {"id": "net1", "driver": "virtio-net-pci", "bus": "br1", "addr": "2.0"},
        {"id": "net2", "driver": "virtio-net-pci", "bus": "br2", "addr": "2.0"},
        {"id": "net3", "driver": "virtio-net-pci", "bus": "br3", "addr": "2.0"},
    ]},
    "q35": {"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
        {"id": "rp3", "driver": "pcie-root-port", "addr": "4.0"},
        {"id": "ppb", "driver": "pcie-pci-bridge", "bus": "rp3"},
        {"id": "net1", "driver": "virtio-net-pci", "bus": "ppb", "addr": "1.0"},
    ]},
}


def stress_topology(machine: str) -> Topology:
    """The stress machine: pc with bridges three deep, q35 with root ports and a
    pcie-pci-bridge (ACPI hotplug, the 7.2 default on both)."""
    if machine not in _STRESS:
        raise HarnessError(f"hotplug-stress knows machines pc and q35, not {machine!r}")
    return topology_from_dict(_STRESS[machine], source=f"hotplug-stress {machine}")


@dataclass(frozen=True)
class CycleFailure:
    cycle: int
    step: str       # plug | plug-check | data | unplug | unplug-check | host-data
    what: str

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "step": self.step, "what": self.what}


@dataclass
class StressResult:
    machine: str
    seed: int
    cycles: int = 0
    failures: list[CycleFailure] = field(default_factory=list)
    plug_s: list[float] = field(default_factory=list)
    unplug_s: list[float] = field(default_factory=list)
    mechanisms: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # category totals

    @property
    def ok(self) -> bool:
        return not self.failures and self.cycles > 0

    def per_cycle(self) -> dict[str, float]:
        n = max(self.cycles, 1)
        out = {k: v / n for k, v in self.seconds.items()}
        out["overhead"] = out.get("wall", 0.0) - out.get("event", 0.0)
        out["own"] = out["overhead"] - sum(out.get(k, 0.0) for k in ("guest", "qmp", "model"))
        return {k: round(v, 4) for k, v in out.items()}


def candidate_slots(guest: Guest, root_bus: str) -> dict[str, list[tuple[str, int, str]]]:
    """{driver: [(bus, slot, mechanism)]}: hot-add places behind a bridge, per the oracle."""
    assert guest.qmp is not None
    out: dict[str, list[tuple[str, int, str]]] = {}
    machine = next(m for m in MACHINES.values() if m.root_bus == root_bus)
    for driver in (DISK_DRIVER, *nic_drivers(machine)):
        answer = where(guest.qmp, driver, hotplug_only=True,
                       root_hotplug=guest.root_bus_hotplug())
        out[driver] = [(b.bus, s, b.hotplug or "none") for b in answer.buses
                       if b.bus != root_bus for s in b.free_slots]
        if not out[driver]:
            raise HarnessError(f"no hot-pluggable slot behind a bridge for {driver}",
                               tail=answer.to_json())
    return out




def run_stress(guest: Guest, cycles: int, seed: int, artifacts: Path,
               progress: Progress) -> StressResult:
    """`cycles` plug/unplug cycles; stops at the first error that leaves the machine
    in an unknown state (a failed plug or unplug), records the rest and goes on."""
    topo: Topology = guest.plan.topology
    result = StressResult(machine=topo.kind, seed=seed)
    rng = random.Random(seed)
    hp = Hotplugger(guest, artifacts / "hotplug")
    places = candidate_slots(guest, topo.root_bus)
    views = _snap(guest, hp, None)
    result.seconds.clear()  # from here on, only time spent inside cycles is booked
    hp.timers.clear()
    for cycle in range(1, cycles + 1):
        started = time.monotonic()
        event0 = hp.timers.get("event", 0.0)
        kind_nic = cycle % 2 == 0
        driver = rng.choice(nic_drivers(topo.facts)) if kind_nic else DISK_DRIVER
        # A bus first, then a slot on it: a bridge with 30 free slots must not
        # crowd out the root ports, which have one each.
        bus = rng.choice(sorted({b for b, _, _ in places[driver]}))
        slot, mechanism = rng.choice([(s, m) for b, s, m in places[driver] if b == bus])
        spec = PlugSpec(id=f"hp{cycle}", driver=driver, bus=bus, slot=slot,
                        mac=seeded_mac(rng) if kind_nic else None)
        try:
            report = checked_cycle(guest, hp, spec, seed, views, cycle=cycle,
                                   book=result.seconds)
        except HarnessError as exc:
            result.failures.append(CycleFailure(cycle, _step_of(exc), exc.describe()))
            result.cycles = cycle
            progress(f"cycle {cycle}/{cycles}: {spec.id} {driver} -> {bus}:{slot:#x} "
                     f"({mechanism}) FAILED, stopping: {exc.message}")
            break
        result.cycles = cycle
        views = report.after_unplug
        result.plug_s.append(report.plugged.seconds)
        result.unplug_s.append(report.unplugged.seconds)
        result.failures += report.failures
        if report.failures:
            report.save(artifacts / f"cycle{cycle}")
        result.mechanisms[mechanism] = result.mechanisms.get(mechanism, 0) + 1
        wall = time.monotonic() - started
        result.seconds["wall"] = result.seconds.get("wall", 0.0) + wall
        verdict = "FAILED" if report.failures else "ok"
        progress(f"cycle {cycle}/{cycles}: {driver} -> {bus}:{slot:#x} ({mechanism}) "
                 f"plug {result.plug_s[-1]:.2f} s, unplug {result.unplug_s[-1]:.2f} s, "
                 f"cycle {wall:.1f} s (waiting {hp.timers.get('event', 0.0) - event0:.1f} s) "
                 f"{verdict}")
    for key in ("event", "guest", "qmp"):
        result.seconds[key] = result.seconds.get(key, 0.0) + hp.timers.get(key, 0.0)
    return result


class StepFailed(HarnessError):
    """A plug or unplug that did not complete; `step` names which, `cause` is the error."""

    def __init__(self, step: str, exc: HarnessError):
        super().__init__(f"{step}: {exc.message}", fix=exc.fix, tail=exc.tail)
        self.step = step
        self.cause = exc


def _step_of(exc: HarnessError) -> str:
    return exc.step if isinstance(exc, StepFailed) else "harness"


def _snap(guest: Guest, hp: Hotplugger, book: dict[str, float] | None) -> ThreeViews:
    views = collect_views(guest, hp.topology, lspci=False)
    if book is not None:
        for key, value in views.seconds.items():  # guest dump, QEMU view, model
            cat = {"guest": "guest", "qemu": "qmp"}.get(key, "model")
            book[cat] = book.get(cat, 0.0) + value
    return views


@dataclass(frozen=True)
class CycleReport:
    """One checked plug/unplug: what happened and what was wrong ([] = nothing)."""

    plugged: Plugged
    unplugged: Unplugged
    failures: tuple[CycleFailure, ...]
    before: ThreeViews
    after_plug: ThreeViews
    after_unplug: ThreeViews

    def save(self, directory: Path) -> None:
        self.before.save(directory, "before")
        self.after_plug.save(directory, "plugged")
        self.after_unplug.save(directory, "unplugged")


def checked_cycle(guest: Guest, hp: Hotplugger, spec: PlugSpec, seed: int,
                  before: ThreeViews | None = None, *, cycle: int = 0,
                  book: dict[str, float] | None = None) -> CycleReport:
    """Plug SPEC, check views and data, unplug, check views and the host's copy.

    A plug or unplug that does not complete raises (the machine's state is then
    unknown); every other problem is returned in `failures`.
    """
    before = before or _snap(guest, hp, book)
    failures: list[CycleFailure] = []
    # Kernel trouble during the cycle (oops, I/O error, IRQ nobody cared, ...) is a
    # failure of the cycle; what the console showed before it is not this cycle's.
    seen = len(guest.console.trouble()) if guest.console is not None else 0

    def fail(step: str, what: str) -> None:
        failures.append(CycleFailure(cycle, step, what))

    try:
        plugged = hp.plug(spec, seed=seed)
    except HarnessError as exc:
        raise StepFailed("plug", exc) from None
    after = _snap(guest, hp, book)
    for problem in step_problems(before, after, plugged.path, added=True):
        fail("plug-check", problem)
    if kind_of(spec.driver) == "disk":
        check = hp.check_disk(plugged, seed)
        if not (check.read_ok and check.write_ok):
            fail("data", check.detail)
    else:
        mac = hp.check_nic(plugged)
        if mac != spec.mac:
            fail("data", f"{plugged.guest_name} reports MAC {mac!r}, device_add set {spec.mac}")
    try:
        unplugged = hp.unplug(spec.id)
    except HarnessError as exc:
        raise StepFailed("unplug", exc) from None
    gone = _snap(guest, hp, book)
    for problem in step_problems(after, gone, plugged.path, added=False):
        fail("unplug-check", problem)
    if plugged.image is not None:
        if not host_block_ok(plugged.image, spec.id, seed):
            fail("host-data", f"{plugged.image}: block 1 is not the pattern the guest wrote")
        plugged.image.unlink(missing_ok=True)
    if guest.console is not None:
        for line in guest.console.trouble()[seen:]:
            fail("console", f"guest kernel trouble: {line}")
    return CycleReport(plugged, unplugged, tuple(failures), before, after, gone)
