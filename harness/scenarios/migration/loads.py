"""The loads a ping-pong runs in its guest (`--load memory,fs,write`), as one set.

Each load checks itself after every hop (`after_hop`: progress within the
hop's deadline, then every write since its previous check read back) and at
the end (`finish`); a wrong byte raises DataMismatch naming what it hit, a
load that stopped moving raises LoadStalled.  `inject` is the harness's own
fault (a write that never happens), which the next check must catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness import views
from harness.deadline import Deadline
from harness.errors import UserError
from harness.guest.running import Guest
from harness.protocols import Shell
from harness.topology.render import AHCI_DISK_ID
from harness.topology.tree import builtin_path
from harness.workloads.blocks import find_disk
from harness.workloads.disk import DiskLoad, LoadMode, LoadPlan, Verified
from harness.workloads.fs import FS_BYTES, FsLoad
from harness.workloads.memory import MemoryLoad

LOAD_NAMES = ("write", "mixed", "memory", "fs", "none")
START_SECONDS = 60.0


class HopLoad(Protocol):
    """What the ping-pong needs from a load."""

    name: str
    kind: str

    def start(self, shell: Shell) -> None: ...

    def wait_started(self, shell: Shell, deadline: Deadline) -> Any: ...

    def after_hop(self, shell: Shell, hop: int, deadline: Deadline) -> Verified: ...

    def finish(self, shell: Shell, hop: int, deadline: Deadline) -> Verified: ...

    def inject(self, shell: Shell) -> str: ...

    def make_room(self, shell: Shell) -> bool:
        """Before a switch-point stop: let a load that waits on the host run again
        (its I/O is what the stop waits for); True when it had to."""


def parse_loads(text: str) -> tuple[str, ...]:
    """"memory,fs,write" -> ("memory", "fs", "write"), with a clear error for bad input."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [n for n in names if n not in LOAD_NAMES]
    if bad or not names:
        raise UserError(f"--load {text!r}: unknown load {', '.join(bad) or '(empty)'}",
                        fix=f"give a comma list of {', '.join(LOAD_NAMES[:-1])} (or none)")
    if "none" in names and len(names) > 1:
        raise UserError(f"--load {text!r}: 'none' cannot be combined with other loads",
                        fix="give either none or a list of loads")
    if "write" in names and "mixed" in names:
        raise UserError(f"--load {text!r}: write and mixed are two modes of the same disk "
                        "load", fix="give one of them")
    return names


@dataclass(frozen=True)
class DiskTarget:
    """A disk to load: the topology device that owns it (None: q35's built-in AHCI)."""

    name: str
    device_id: str | None
    size: int


@dataclass(frozen=True)
class LoadOptions:
    loads: tuple[str, ...] = ("write",)
    disks: tuple[DiskTarget, ...] = ()
    seed: int = 1
    memory_mib: int = 256
    memory_rate_mib_s: int = 64       # MiB/s of pages written; 0: flat out


def needs_disks(loads: Sequence[str]) -> bool:
    return any(n in loads for n in ("write", "mixed", "fs"))


def host_disk(guest: Guest, target: DiskTarget) -> Path | None:
    stem = target.device_id or AHCI_DISK_ID
    for disk in guest.rendered.scratch_disks:
        if disk.path.name == f"{stem}.qcow2":
            return disk.path
    return None


def build_loads(guest: Guest, options: LoadOptions,
                progress: Any = lambda message: None) -> list[HopLoad]:
    """Start every load of `options` in `guest`; returns them started."""
    assert guest.qmp is not None
    loads: list[HopLoad] = []
    started = []
    if needs_disks(options.loads):
        qemu = views.collect_qemu_view(guest.qmp, guest.root_bus_hotplug())
        for target in options.disks:
            if target.device_id is None:
                path = builtin_path(guest.plan.topology, "ich9-ahci")
            else:
                path = qemu.function(target.device_id).path
            device = find_disk(guest, path, f"disk {target.name}")
            if "fs" in options.loads:
                if target.size < FS_BYTES + (8 << 20):
                    raise UserError(f"disk {target.name} has {target.size >> 20} MiB; the fs "
                                    f"load needs at least {(FS_BYTES >> 20) + 8} MiB")
                loads.append(FsLoad(target.name, device, options.seed, host_disk(guest, target)))
            for mode in ("write", "mixed"):
                if mode in options.loads:
                    mode_: LoadMode = "mixed" if mode == "mixed" else "write"
                    base = FS_BYTES if "fs" in options.loads else 0
                    loads.append(DiskLoad(LoadPlan.from_seed(target.name, options.seed,
                                                             target.size, base_bytes=base),
                                          device, mode_))
    if "memory" in options.loads:
        loads.append(MemoryLoad(options.memory_mib, options.memory_rate_mib_s))
    for load in loads:
        load.start(guest)
        started.append(load)
    for load in loads:
        load.wait_started(guest, Deadline(START_SECONDS, f"start of the {load.kind} load "
                                                         f"{load.name}"))
        progress(f"load {load.kind} {load.name} running")
    return loads
