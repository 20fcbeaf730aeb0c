"""One drawn machine per test: the pytest face of the exploration.

tests/pci/test_explore.py is parametrized by example index; each test asks
`ExampleRunner.run(index)` for its own machine, draws.draw(seed, index), so
xdist workers split one seed's examples with no two booting the same machine
(an index that repeats an earlier index's machine is skipped).  A failure is
shrunk and saved as a case next to the test's artifacts, with its replay
command.  A budget in minutes (the nightly's --explore-minutes) is shared by
all workers through a stamp file: the first test to start writes it, tests
starting after the budget are skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness.factory import GuestFactory
from harness.qemu.devprops import device_properties
from harness.qemu.drivers import DRIVERS
from harness.qemu.probe import probed_facts
from harness.scenarios.explore.case import outcome_meta, save_case
from harness.scenarios.explore.check import MachineCheck, Outcome
from harness.scenarios.explore.draws import Space, draw, first_index
from harness.scenarios.explore.run import probe_driver_for
from harness.scenarios.explore.shrink import shrink
from harness.scenarios.explore.strategies import drawable_drivers


def explore_factory(factory: GuestFactory) -> GuestFactory:
    """FACTORY's binary, image and accelerator without the snapshot cache: a
    snapshot per drawn machine would be written once and never read."""
    return GuestFactory(replace(factory.settings, snapshot=False), progress=factory.progress,
                        accel=factory.accel, announce_accel=False)


def budget_left(stamp: Path, minutes: float | None) -> bool:
    """Whether the shared budget still runs (the first caller starts it)."""
    if minutes is None:
        return True
    try:
        fd = os.open(stamp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    return time.time() - stamp.stat().st_mtime < minutes * 60


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    index: int
    saved: Path | None = None
    replay: str = ""
    shrunk_from: int = 0

    def message(self) -> str:
        lines = [f"example {self.index}: {self.outcome.summary()}"]
        lines += [f"  {p.get('text')}" for p in self.outcome.problems]
        if self.saved is not None:
            lines += [(f"minimal machine ({len(self.outcome.topology.devices)} device(s), "
                       f"shrunk from {self.shrunk_from}) saved as {self.saved}"),
                      f"replay: {self.replay}"]
        return "\n".join(lines)


class ExampleRunner:
    def __init__(self, factory: GuestFactory, seed: int):
        self.factory = explore_factory(factory)
        self.seed = seed
        props = device_properties(self.factory.binary, DRIVERS)
        self.space = Space.of(props, probed_facts(self.factory.binary).port_link_speeds)
        self.probe = probe_driver_for(drawable_drivers(props))

    def duplicate_of(self, index: int) -> int | None:
        first = first_index(self.seed, index, self.space)
        return None if first == index else first

    def run(self, index: int, artifacts: Path, *, shrink_minutes: float = 5.0) -> Verdict:
        check = MachineCheck(self.factory, artifacts, probe_driver=self.probe)
        outcome = check(draw(self.seed, index, self.space))
        if not outcome.failed:
            return Verdict(outcome, index)
        shrunk = shrink(check, outcome, budget_s=shrink_minutes * 60)
        binary = str(self.factory.binary.given or self.factory.binary.path)
        replay = f"pci-harness explore --replay {{file}} --qemu-binary {binary}"
        meta = outcome_meta(shrunk.outcome, qemu=self.factory.binary.version,
                            qemu_binary=binary, seed=self.seed, index=index, replay=replay,
                            original_devices=len(outcome.topology.devices),
                            shrink={"s": round(shrunk.seconds, 1), "boots": shrunk.evaluations,
                                    "complete": shrunk.complete})
        saved = save_case(artifacts / "found", shrunk.outcome, meta)
        return Verdict(shrunk.outcome, index, saved, replay.replace("{file}", str(saved)),
                       len(outcome.topology.devices))
