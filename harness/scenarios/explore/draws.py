"""Which machine example N of seed S is: the same answer in every process.

Hypothesis draws the machines (strategies.machines) in batches: batch b of
seed S is one generate-only run of Hypothesis seeded with (S, b) whose test
body only records what it is given, so a batch costs milliseconds and is the
same list wherever it is drawn (then shuffled with the same seed).  Example N is entry N % BATCH of batch
N // BATCH.  That is what lets workers split one seed's examples by index with
no two of them booting the same machine (a later index that repeats an
earlier machine is a duplicate and is skipped), and what makes `--seed S`
draw the same machines again on the same QEMU (the drawable properties come
from the binary, see qemu/devprops.py).

The example database (Hypothesis's DirectoryBasedExampleDatabase, under the
harness cache) keeps the machines that failed, as topology TOML, keyed by the
QEMU: a later run tries them first, and drops one that passes.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from harness.paths import cache_root
from harness.scenarios.explore.strategies import MAX_DEVICES, Props, machines
from harness.topology.data import Topology

BATCH = 200


def _batch_seed(run_seed: int, batch: int) -> int:
    digest = hashlib.sha256(f"pci-harness-explore:{run_seed}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Space:
    """What machines are drawn from (hashable, so a batch is drawn once per process):
    the -device properties and x-speed values this QEMU has, and the size bound."""

    props: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    link_speeds: tuple[str, ...] | None = None
    max_devices: int = MAX_DEVICES

    @classmethod
    def of(cls, props: Props | None, link_speeds: tuple[str, ...] | None = None,
           max_devices: int = MAX_DEVICES) -> Space:
        key = None if props is None else tuple(sorted((k, tuple(sorted(v)))
                                                      for k, v in props.items()))
        return cls(key, link_speeds, max_devices)

    def strategy(self) -> st.SearchStrategy[Topology]:
        props = None if self.props is None else {k: frozenset(v) for k, v in self.props}
        return machines(props, max_devices=self.max_devices, link_speeds=self.link_speeds)


@functools.lru_cache(maxsize=16)
def _batch(run_seed: int, batch: int, space: Space) -> tuple[Topology, ...]:
    out: list[Topology] = []

    @seed(_batch_seed(run_seed, batch))
    @settings(max_examples=BATCH, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(space.strategy())
    def record(topology: Topology) -> None:
        out.append(topology)

    record()
    # Hypothesis starts a run with its simplest machines (no devices) and then
    # mutates what it drew; in index order that spends the first boots of every
    # batch on empty machines and puts near-twins side by side.  A seeded shuffle
    # keeps the batch and spreads both out.
    random.Random(_batch_seed(run_seed, batch)).shuffle(out)
    return tuple(out)


def draw(run_seed: int, index: int, space: Space = Space()) -> Topology:
    """Example INDEX of seed RUN_SEED (deterministic for the same space)."""
    batch = _batch(run_seed, index // BATCH, space)
    # Hypothesis may stop a batch early when it has seen its whole space; wrap.
    return batch[index % BATCH % len(batch)]


def first_index(run_seed: int, index: int, space: Space = Space()) -> int:
    """The lowest index that draws the same machine as INDEX (INDEX when new)."""
    key = draw(run_seed, index, space).cache_key()
    for earlier in range(index):
        if draw(run_seed, earlier, space).cache_key() == key:
            return earlier
    return index


def example_database(qemu_version: str, binary: str) -> tuple[DirectoryBasedExampleDatabase,
                                                              bytes]:
    """The database of failing machines and this QEMU's key in it (version and
    path: a wrapper around the same binary is another QEMU)."""
    path = Path(cache_root()) / "explore" / "examples"
    path.mkdir(parents=True, exist_ok=True)
    return DirectoryBasedExampleDatabase(str(path)), f"explore:{qemu_version}:{binary}".encode()
