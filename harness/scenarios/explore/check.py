"""The property every drawn machine must have, checked on a real guest.

One machine: boot it, take the three views, and the verdict is an Outcome.
Disagreements count both ways:

- the model calls the topology valid and QEMU refuses it ("refused");
- the three views differ ("differs"), less what a known QEMU gap explains;
- the guest's kernel reports trouble on the console ("console");
- the placement probe: `where` (QEMU's QOM) lists a bus and slot for a driver
  that the model refuses there ("placement": the model's rules and QEMU's
  answer disagree; a slot QEMU takes only against the spec, which `where`
  itself flags, is not one); QEMU itself is then asked (the machine started
  paused with that device) and its answer, accepted or refused, is the
  problem's "qemu" side;
- anything else that stopped the check ("error": a boot that never finished).

An Outcome's `signature` names what failed in terms that survive shrinking
(driver and field, never a device id), so the shrinker can ask "does the
smaller machine fail the same way?".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessError, QemuExited, QemuRefused, TopologyError
from harness.factory import GuestFactory
from harness.guest.running import Guest
from harness.qemu.binary import QemuBinary
from harness.qemu.facts import parse_version
from harness.qemu.known import gap_for_difference
from harness.scenarios.explore.steps import hotplug_problems, migrate_problems
from harness.scenarios.migration.hop import shared_machine
from harness.scenarios.threeview import collect_views
from harness.scenarios.where import where
from harness.topology.data import Address, Device, Topology
from harness.topology.placement import validate
from harness.topology.render import probe_device_args
from harness.views.compare import Difference

OutcomeKind = Literal["agree", "differs", "refused", "console", "placement", "hotplug", "migration",
               "error"]
OutcomeSignature = frozenset[tuple[str, str, str]]
_ID_IN_TEXT = re.compile(r"\bd\d+\b|'d\d+'|id=d\d+")


@dataclass(frozen=True)
class Outcome:
    """What one machine did.  `problems`: one dict per disagreement, with the
    side each view took (model / qemu / guest, or where / model)."""

    topology: Topology
    kind: OutcomeKind
    problems: tuple[dict[str, Any], ...] = ()
    known: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def failed(self) -> bool:
        return self.kind != "agree"

    @property
    def signature(self) -> OutcomeSignature:
        """(kind, driver, what) for each problem: stable when ids are renumbered.
        A refusal is QEMU's reason alone: the same reason for another driver (slot 0
        of an SHPC bus, whatever sits there) is the same failure."""
        def driver(p: dict[str, Any]) -> str:
            return "" if self.kind == "refused" else str(p.get("driver", ""))
        return frozenset((self.kind, driver(p), str(p.get("field", "")))
                         for p in self.problems) or frozenset({(self.kind, "", "")})

    def summary(self) -> str:
        if not self.failed:
            return "agree"
        first = self.problems[0] if self.problems else {}
        text = first.get("text") or self.message
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.kind}: {text}{more}"


def same_failure(wanted: OutcomeSignature, outcome: Outcome) -> bool:
    """Does OUTCOME fail the way WANTED did (any one of its problems again)?"""
    return outcome.failed and bool(wanted & outcome.signature)


def _driver(topology: Topology, name: str) -> str:
    try:
        return topology.device(name).driver
    except KeyError:
        return name  # a built-in function or the management NIC: its path or id


def difference_problem(topology: Topology, d: Difference) -> dict[str, Any]:
    return {"device": d.device, "driver": _driver(topology, d.device), "field": d.field,
            "model": d.model, "qemu": d.qemu, "guest": d.guest, "text": str(d)}


def refusal_problem(topology: Topology, exc: QemuRefused) -> dict[str, Any]:
    """QEMU's refusal: the device it names (render writes topology ids)."""
    text = str(exc)
    dev = next((d for d in topology.devices if f"device {d.id!r}" in text), None)
    reason = _ID_IN_TEXT.sub("<id>", text.split(": ", 1)[-1])
    return {"device": dev.id if dev else "", "driver": dev.driver if dev else "",
            "field": reason[:120], "model": "valid", "qemu": "refused", "guest": None,
            "text": text}


def placement_problems(topology: Topology, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Placements `where` lists (its free slots) that the model refuses.

    The first and last free slot of each listed bus are tried, as a device of
    the driver asked about; slots `where` marks as QEMU-only leniency
    (qemu_also_accepts) are the spec's refusals and expected.
    """
    driver = answer["driver"]
    out: list[dict[str, Any]] = []
    for bus in answer["buses"]:
        for slot in sorted({bus["free_slots"][0], bus["free_slots"][-1]}):
            dev = Device(id="probe", driver=driver,
                         bus=None if bus["bus"] == topology.root_bus else bus["bus"],
                         addr=Address(slot, 0))
            try:
                validate(replace(topology, devices=topology.devices + (dev,)))
            except TopologyError as exc:
                out.append({"device": f"{driver}@{bus['bus']}:{slot:#x}", "driver": driver,
                            "field": f"placement on a {bus['kind']} bus", "where": "allowed",
                            "model": "refused", "qemu": None, "guest": None,
                            "text": f"where lists {driver} at {bus['bus']} slot {slot:#x}; "
                                    f"the model refuses: {exc}"})
    return out


Checker = Callable[[Topology], Outcome]


class MachineCheck:
    """Boots machines with one factory and judges each (a Checker)."""

    def __init__(self, factory: GuestFactory, artifacts: Path, *,
                 probe_driver: Callable[[Topology], str | None] = lambda t: None,
                 say: Callable[[str], None] = lambda m: None, hotplug: bool = False,
                 migrate: bool = False, dst_binary: QemuBinary | None = None):
        self.factory = factory
        self.artifacts = artifacts
        self.probe_driver = probe_driver
        self.say = say
        self.hotplug = hotplug
        self.migrate = migrate or dst_binary is not None
        self.dst_binary = dst_binary
        self.version = parse_version(factory.binary.version)
        self.count = 0

    def __call__(self, topology: Topology) -> Outcome:
        self.count += 1
        started = time.monotonic()
        where_dir = self.artifacts / f"m{self.count:04d}"
        try:
            outcome = self._check(topology, where_dir)
        except QemuRefused as exc:
            outcome = Outcome(topology, "refused", (refusal_problem(topology, exc),),
                              message=str(exc))
        except HarnessError as exc:
            outcome = Outcome(topology, "error", message=f"{type(exc).__name__}: {exc}")
        return replace(outcome, seconds=time.monotonic() - started)

    def _check(self, topology: Topology, artifacts: Path) -> Outcome:
        if self.dst_binary is not None:  # a machine type both QEMUs build
            topology = replace(topology, machine=shared_machine(
                topology.machine, self.factory.binary, self.dst_binary))
        t0 = time.monotonic()
        guest = self.factory.launch(topology, artifacts, name="explore")
        steps: list[dict[str, Any]] = []
        step_kind: OutcomeKind = "agree"
        try:
            boot_s = time.monotonic() - t0
            views = collect_views(guest, lspci=False)
            assert guest.console is not None
            trouble = guest.console.trouble()
            probe = self.probe_driver(topology)
            answer = None
            if probe is not None and guest.qmp is not None:
                answer = where(guest.qmp, probe, root_hotplug=guest.root_bus_hotplug())
            if self.hotplug and not views.differences() and not trouble:
                steps = hotplug_problems(guest, artifacts, self.count, self.say)
                step_kind = "hotplug"
            if self.migrate and not steps and not views.differences() and not trouble:
                steps = migrate_problems(guest, views, artifacts, self.dst_binary, self.say)
                step_kind = "migration"
        finally:
            guest.shutdown()
        machine = self.factory.binary.resolve_machine(topology.machine)
        problems: list[dict[str, Any]] = []
        known: list[dict[str, Any]] = []
        for d in views.differences():
            problem = difference_problem(topology, d)
            gap = gap_for_difference(problem["driver"], d.field, d.qemu, self.version, machine,
                                     ancestors=topology.ancestors(d.device))
            (known if gap is not None else problems).append(
                problem if gap is None else {**problem, "gap": gap.id})
        timings = {"boot_s": boot_s, **{f"{k}_s": v for k, v in views.seconds.items()}}
        if problems:
            views.save(artifacts)
            return Outcome(topology, "differs", tuple(problems), tuple(known), timings=timings)
        if trouble:
            return Outcome(topology, "console", tuple(
                {"device": "", "driver": "", "field": line.split(":", 1)[0], "text": line}
                for line in trouble), tuple(known), timings=timings)
        if steps:
            return Outcome(topology, step_kind, tuple(steps), tuple(known), timings=timings)
        if answer is not None:
            placement = [self._qemu_side(topology, p)
                         for p in placement_problems(topology, answer.to_dict())[:2]]
            if placement:
                return Outcome(topology, "placement", tuple(placement), tuple(known),
                               timings=timings)
        return Outcome(topology, "agree", (), tuple(known), timings=timings)

    def _qemu_side(self, topology: Topology, problem: dict[str, Any]) -> dict[str, Any]:
        """QEMU's own answer to a placement the model refuses: start the machine
        paused with the device added as `where` placed it."""
        driver, rest = problem["device"].split("@", 1)
        bus, slot = rest.rsplit(":", 1)
        extra = ("-S", *probe_device_args(driver, "probe", bus, int(slot, 16)))
        probe = Guest(self.factory.plan(topology, boot_guest=False, extra_args=extra),
                      self.artifacts / f"m{self.count:04d}-placement", name="placement")
        try:
            probe.launch()
            side = "accepted"
        except QemuExited as exc:
            side = "refused: " + (exc.stderr.strip().splitlines() or [""])[-1][:200]
        finally:
            probe.shutdown()
        return {**problem, "qemu": side, "text": f"{problem['text']}; QEMU {side}"}
