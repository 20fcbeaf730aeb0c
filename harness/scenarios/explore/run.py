"""The exploration loop: draw, boot, judge, shrink what fails, save it.

Machines come from draws.draw(seed, index) in index order (or only the
indexes of one shard, for parallel workers); a machine an earlier index
already drew is skipped, so `distinct_topologies` counts machines booted.
Failing machines kept in the example database from earlier runs on this QEMU
are tried first.  A failure is shrunk (shrink.py) once per new signature and
saved as a case (case.py); a later failure with a signature already found is
counted, not shrunk again.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import TopologyError
from harness.scenarios.explore.case import outcome_meta, problem_lines, save_case, topology_toml
from harness.scenarios.explore.check import Checker, Outcome
from harness.scenarios.explore.draws import Space, draw, example_database, first_index
from harness.scenarios.explore.shrink import shrink
from harness.stats import latency
from harness.topology.data import Topology
from harness.topology.load import topology_from_dict


@dataclass(frozen=True)
class Budget:
    """Stop after `examples` machines or `minutes`, whichever comes first."""

    examples: int | None = None
    minutes: float | None = None
    shrink_minutes: float = 5.0


@dataclass
class Found:
    outcome: Outcome           # the shrunk machine
    saved: Path | None
    replay: str
    original_devices: int
    shrink_s: float
    evaluations: int
    found_after_s: float
    repeats: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"difference": "; ".join(problem_lines(self.outcome)),
                "kind": self.outcome.kind,
                "saved": str(self.saved) if self.saved else None, "replay": self.replay,
                "devices": len(self.outcome.topology.devices),
                "original_devices": self.original_devices,
                "problems": list(self.outcome.problems),
                "shrink_s": round(self.shrink_s, 1), "shrink_boots": self.evaluations,
                "found_after_s": round(self.found_after_s, 1), "repeats": self.repeats}


@dataclass
class Report:
    examples: int = 0
    distinct: set[str] = field(default_factory=set)
    seconds: list[float] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    known: int = 0
    from_database: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": not self.found, "examples": self.examples,
                "distinct_topologies": len(self.distinct),
                "per_topology_s": latency(self.seconds, 2),
                "failures": [f.to_dict() for f in self.found],
                "known_differences": self.known, "from_database": self.from_database,
                "elapsed_s": round(self.elapsed_s, 1)}


def describe(topology: Topology) -> str:
    depth = 0
    for dev in topology.devices:
        d, cur = 0, dev
        while cur.bus is not None:
            d += 1
            cur = topology.device(cur.bus)
        depth = max(depth, d + 1)
    return (f"{topology.machine}{'' if topology.acpi_hotplug else ' acpi-hotplug=off'} "
            f"{len(topology.devices)} device(s) depth {depth}")


class Explorer:
    def __init__(self, check: Checker, *, seed: int, budget: Budget, space: Space,
                 qemu_version: str, qemu_binary: str, save_dir: Path | None,
                 replay_command: str, shard: tuple[int, int] = (0, 1),
                 use_database: bool = True, say: Callable[[str], None] = lambda m: None,
                 meta: dict[str, Any] | None = None):
        self.check = check
        self.seed = seed
        self.budget = budget
        self.space = space
        self.qemu_version = qemu_version
        self.qemu_binary = qemu_binary
        self.save_dir = save_dir
        self.replay_command = replay_command
        self.shard = shard
        self.use_database = use_database
        self.say = say
        self.meta = meta or {}  # how the machines were checked (--hotplug ...): for replay
        self.report = Report()
        self.started = time.monotonic()

    def _time_left(self) -> bool:
        if self.budget.minutes is None:
            return True
        return time.monotonic() - self.started < self.budget.minutes * 60

    def _more(self) -> bool:
        if self.budget.examples is not None and self.report.examples >= self.budget.examples:
            return False
        return self._time_left()

    def _database_machines(self) -> list[Topology]:
        if not self.use_database:
            return []
        db, key = example_database(self.qemu_version, self.qemu_binary)
        out = []
        for value in db.fetch(key):
            try:
                out.append(topology_from_dict(tomllib.loads(value.decode())))
            except (TopologyError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                db.delete(key, value)  # written by an older model: no longer a machine
        return out

    def run(self) -> Report:
        for topology in self._database_machines():
            if not self._more():
                break
            self.report.from_database += 1
            self._one(topology, None)
        index = self.shard[0]
        while self._more():
            topology = draw(self.seed, index, self.space)
            # Another shard boots a machine an earlier index drew (first_index).
            sharded_twin = self.shard[1] > 1 and first_index(self.seed, index,
                                                             self.space) != index
            if topology.cache_key() not in self.report.distinct and not sharded_twin:
                self._one(topology, index)
            index += self.shard[1]
        self.report.elapsed_s = time.monotonic() - self.started
        return self.report

    def _one(self, topology: Topology, index: int | None) -> None:
        self.report.examples += 1
        self.report.distinct.add(topology.cache_key())
        outcome = self.check(topology)
        self.report.seconds.append(outcome.seconds)
        self.report.known += len(outcome.known)
        where = f"#{index}" if index is not None else "database"
        self.say(f"explore {self.report.examples} ({where}): {describe(topology)}: "
                 f"{outcome.summary()} ({outcome.seconds:.1f} s)")
        self._database(outcome)
        if outcome.failed:
            self._failure(outcome, index)

    def _database(self, outcome: Outcome) -> None:
        if not self.use_database:
            return
        db, key = example_database(self.qemu_version, self.qemu_binary)
        value = topology_toml(outcome.topology).encode()
        if outcome.failed:
            db.save(key, value)
        else:
            db.delete(key, value)

    def _failure(self, outcome: Outcome, index: int | None) -> None:
        for found in self.report.found:
            if found.outcome.signature & outcome.signature:
                found.repeats += 1
                return
        found_after = time.monotonic() - self.started
        self.say(f"explore: shrinking a failure of {len(outcome.topology.devices)} device(s)")
        shrunk = shrink(self.check, outcome, budget_s=self.budget.shrink_minutes * 60,
                        say=self.say)
        best = shrunk.outcome
        replay = self.replay_command
        meta = outcome_meta(best, qemu=self.qemu_version, qemu_binary=self.qemu_binary,
                            seed=self.seed, index=index, replay=replay,
                            original_devices=len(outcome.topology.devices),
                            shrink={"s": round(shrunk.seconds, 1), "boots": shrunk.evaluations,
                                    "complete": shrunk.complete})
        meta.update(self.meta)
        saved = save_case(self.save_dir, best, meta) if self.save_dir is not None else None
        self.say(f"explore: minimal failing machine: {describe(best.topology)} "
                 f"after {shrunk.evaluations} boot(s), {shrunk.seconds:.0f} s"
                 + (f"; saved {saved}" if saved else ""))
        self.report.found.append(Found(best, saved, replay.replace("{file}", str(saved or "FILE")),
                                       len(outcome.topology.devices), shrunk.seconds,
                                       shrunk.evaluations, found_after))



def probe_driver_for(drivers: tuple[Any, ...]) -> Callable[[Topology], str | None]:
    """The driver whose placements `where` is asked about on a machine: one of
    the table's, chosen by the machine's key (the same machine, the same driver)."""
    # A driver that needs a backend QEMU refuses without (a drive) cannot be
    # placed bare; asking about it would only find that.
    names = sorted(d.driver for d in drivers if not d.needs_drive)

    def choose(topology: Topology) -> str | None:
        if not names:
            return None
        return str(names[int(topology.cache_key(), 16) % len(names)])

    return choose
