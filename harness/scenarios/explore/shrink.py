"""Shrink a failing machine to a minimal one that still fails the same way.

Why not Hypothesis's own shrinker: it works on the choice sequence and spends
hundreds of test calls; every call here is a guest boot (3-6 s under TCG), so
a failure would take half an hour to shrink.  This shrinker knows what a
topology is and tries the big steps first, each a valid topology
(layout.validate, free) that is booted only when new (results memoised by
cache_key):

1. keep only the devices a problem names and their bridges (usually one boot);
2. remove each device with everything below it;
3. hoist a device to the root bus, or to its parent's bus (shallower nesting);
4. drop each property, disk, chosen address; ACPI bridge hotplug back on;
   a versioned machine type to its alias.

Repeats until no step keeps the failure, or the budget is spent.  The result
has the fewest devices and shallowest nesting these steps reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from harness.errors import TopologyError
from harness.scenarios.explore.check import Checker, Outcome, OutcomeSignature, same_failure
from harness.topology.data import Device, Topology, machine_kind
from harness.topology.placement import validate


@dataclass(frozen=True)
class Shrunk:
    outcome: Outcome          # of the smallest failing machine
    evaluations: int          # machines booted while shrinking
    seconds: float
    complete: bool            # False: the budget ran out before a fixpoint


def _below(topo: Topology, dev_id: str) -> set[str]:
    """DEV_ID and every device below it."""
    out = {dev_id}
    grew = True
    while grew:
        grew = False
        for d in topo.devices:
            if d.bus in out and d.id not in out:
                out.add(d.id)
                grew = True
    return out


def _ancestors(topo: Topology, dev_id: str) -> set[str]:
    """DEV_ID, the bridges above it, and the function 0 of each one's slot (a
    function 1-7 is not scanned without it)."""
    out: set[str] = set()
    cur = next((d for d in topo.devices if d.id == dev_id), None)
    while cur is not None:
        out.add(cur.id)
        if cur.addr is not None and cur.addr.function:
            out |= {d.id for d in topo.devices if d.bus == cur.bus and d.addr is not None
                    and d.addr.slot == cur.addr.slot and d.addr.function == 0}
        cur = next((d for d in topo.devices if d.id == cur.bus), None) if cur.bus else None
    return out


def _without(topo: Topology, ids: set[str]) -> Topology:
    return replace(topo, devices=tuple(d for d in topo.devices if d.id not in ids))


def _with_device(topo: Topology, dev: Device) -> Topology:
    return replace(topo, devices=tuple(dev if d.id == dev.id else d for d in topo.devices))


def candidates(topo: Topology, named: set[str]) -> Iterator[Topology]:
    """Smaller machines than TOPO, biggest steps first (some may be invalid)."""
    keep: set[str] = set()
    for dev_id in named:
        keep |= _ancestors(topo, dev_id)
    if keep and len(keep) < len(topo.devices):
        yield replace(topo, devices=tuple(d for d in topo.devices if d.id in keep))
    if named and len(named) < len(topo.devices):  # only them, on the root bus
        yield replace(topo, devices=tuple(
            replace(d, bus=None, addr=None, props=tuple(
                (k, v) for k, v in d.props if k != "multifunction"))
            for d in topo.devices if d.id in named))
    for dev in reversed(topo.devices):
        yield _without(topo, _below(topo, dev.id))
    for dev in topo.devices:
        if dev.bus is not None:
            parent = topo.device(dev.bus)
            yield _with_device(topo, replace(dev, bus=None, addr=None))  # to the root bus
            if parent.bus is not None:
                yield _with_device(topo, replace(dev, bus=parent.bus, addr=None))
    for dev in topo.devices:
        for i in range(len(dev.props)):
            yield _with_device(topo, replace(dev, props=dev.props[:i] + dev.props[i + 1:]))
        if dev.disk is not None:
            yield _with_device(topo, replace(dev, disk=None))
        if dev.addr is not None:
            yield _with_device(topo, replace(dev, addr=None))
    if not topo.acpi_hotplug:
        yield replace(topo, acpi_hotplug=True)
    alias = machine_kind(topo.machine)
    if topo.machine != alias:
        yield replace(topo, machine=alias)


def _valid(topo: Topology) -> bool:
    try:
        validate(topo)
    except TopologyError:
        return False
    return True


def _named(outcome: Outcome) -> set[str]:
    ids = {d.id for d in outcome.topology.devices}
    return {str(p.get("device")) for p in outcome.problems} & ids


def first_failure(outcome: Outcome) -> OutcomeSignature:
    """What to shrink for: the problems of the first problem's driver.  A machine
    with two unrelated faults is shrunk for one; the other shows again later."""
    driver = str(outcome.problems[0].get("driver", "")) if outcome.problems else ""
    return frozenset(s for s in outcome.signature if s[1] == driver) or outcome.signature


def shrink(check: Checker, failing: Outcome, *, budget_s: float = 300.0,
           max_evaluations: int = 60, wanted: OutcomeSignature | None = None,
           say: Callable[[str], None] = lambda m: None) -> Shrunk:
    """The smallest machine reachable from FAILING that fails the same way
    (WANTED: default, first_failure(FAILING))."""
    started = time.monotonic()
    wanted = wanted or first_failure(failing)
    seen: dict[str, Outcome] = {failing.topology.cache_key(): failing}
    best = failing
    evaluations = 0
    progress = True
    while progress:
        progress = False
        for cand in candidates(best.topology, _named(best)):
            if time.monotonic() - started > budget_s or evaluations >= max_evaluations:
                return Shrunk(best, evaluations, time.monotonic() - started, False)
            key = cand.cache_key()
            if key in seen or not _valid(cand):
                continue
            evaluations += 1
            outcome = check(cand)
            seen[key] = outcome
            if same_failure(wanted, outcome):
                say(f"shrink: {len(best.topology.devices)} -> {len(cand.devices)} device(s) "
                    f"still fails ({outcome.summary()})")
                best = outcome
                progress = True
                break
    return Shrunk(best, evaluations, time.monotonic() - started, True)
