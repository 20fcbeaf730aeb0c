"""The values of a ping-pong run: what it is asked (PingPongOptions, the disks
to load) and what it returns (a HopRecord per hop, the PingPongResult)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.qemu.binary import QemuBinary
from harness.scenarios.migration.hop import HopFailure, HopStats, Transport
from harness.scenarios.migration.keepstate import KeptState
from harness.scenarios.migration.loads import DiskTarget
from harness.scenarios.migration.switchpoint import SwitchPlan
from harness.scenarios.migration.switchstop import StopRecord
from harness.topology import Topology
from harness.workloads.disk import Verified

__all__ = ["HopRecord", "PingPongOptions", "PingPongResult", "disk_targets", "switch_rows"]


def disk_targets(topology: Topology, kinds: Sequence[str]) -> tuple[DiskTarget, ...]:
    """The topology's disks of the given kinds ("ahci", "virtio-blk")."""
    out: list[DiskTarget] = []
    if "ahci" in kinds and topology.ahci_disk is not None:
        out.append(DiskTarget("ahci", None, topology.ahci_disk))
    for dev in topology.devices:
        if dev.disk is None:
            continue
        if (dev.driver == "ich9-ahci" and "ahci" in kinds) or \
                (dev.driver == "virtio-blk-pci" and "virtio-blk" in kinds):
            out.append(DiskTarget(dev.id, dev.id, dev.disk))
    return tuple(out)


@dataclass(frozen=True)
class PingPongOptions:
    hops: int                      # hops to run; with until_fail the upper limit
    seed: int
    load: str = "write"            # comma list: write|mixed, memory, fs; or none
    transport: Transport = "unix"
    disks: tuple[DiskTarget, ...] = ()
    dst_binary: QemuBinary | None = None   # odd hops run on it, even hops come back
    until_fail: bool = False
    max_time_s: float | None = None
    reproduce: tuple[str, ...] = ()        # argv that replays this run (reproduce.sh)
    memory_mib: int = 256                  # memory load: working set (regions A + B)
    memory_rate_mib_s: int = 64            # memory load: dirty-rate cap (MiB/s), 0 = flat out
    keep_states: int = 0                   # keep the streams + disks of the last K hops
    inject: tuple[tuple[str, int], ...] = ()   # (load kind, hop): a lost write before it
    #: compare the paused source's RAM with the loaded destination's before it runs
    #: (ramdiff.py); None: with the memory load, whose bug class it names exactly
    compare_ram: bool | None = None
    #: stop the source's vCPU at a switch point before every hop (switchpoint.py)
    switch: SwitchPlan | None = None

    @property
    def comparing_ram(self) -> bool:
        return self.compare_ram if self.compare_ram is not None else \
            "memory" in self.load.split(",")


@dataclass
class HopRecord:
    stats: HopStats
    check_s: float
    verified: dict[str, Verified] = field(default_factory=dict)
    kept: KeptState | None = None
    ram_compare_s: float | None = None   # source/destination RAM compared (ramdiff)
    stop: StopRecord | None = None       # where the vCPU was stopped (switch point)

    @property
    def switch(self) -> dict[str, Any] | None:
        return self.stop.as_dict() if self.stop is not None else None

    @property
    def verified_mib(self) -> float:
        return sum(v.bytes for v in self.verified.values()) / 2**20

    @property
    def verified_files(self) -> int:
        return sum(v.files for v in self.verified.values())

    @property
    def verified_pages(self) -> int:
        """Page checks the memory checker made since the previous check."""
        return sum(v.units for name, v in self.verified.items() if name == "memory")

    @property
    def verify_s(self) -> float:
        return sum(v.seconds for v in self.verified.values())

    def describe(self) -> str:
        """The hop's progress line."""
        s = self.stats
        down = f"{s.downtime_ms:.0f} ms" if s.downtime_ms is not None else "?"
        kept = (f"; state kept ({self.kept.stream_bytes / 1e6:.0f} MB stream, "
                f"{self.kept.disk_bytes / 1e6:.0f} MB disks, "
                f"{self.kept.disks_s:.2f} s disk copy)" if self.kept else "")
        switch = self.switch or {}
        what = f"{switch['instruction']}, " if switch.get("instruction") else ""
        where = (f" stopped at {switch['where']} ({what}{switch['stop_s']:.2f} s),"
                 if switch else "")
        ram = (f", RAM identical at the switchover ({self.ram_compare_s:.2f} s)"
               if self.ram_compare_s is not None else "")
        return (f"hop {s.hop} {s.source}->{s.destination}:{where} {s.total_s:.2f} s "
                f"(downtime {down}, {(s.ram_bytes or 0) / 1e6:.0f} MB{ram}), "
                f"checks {self.check_s:.2f} s: verified {self.verified_mib:.1f} MiB, "
                f"{self.verified_files} files in {self.verify_s:.2f} s{kept}")

    def as_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "check_s": round(self.check_s, 3),
                "verified_mib": round(self.verified_mib, 2),
                "verified_files": self.verified_files, "verified_pages": self.verified_pages,
                "verify_s": round(self.verify_s, 3),
                "verified": {k: {**v.__dict__, "seconds": round(v.seconds, 3)}
                             for k, v in self.verified.items()},
                "kept_state": self.kept.as_dict() if self.kept else None,
                "ram_compare_s": None if self.ram_compare_s is None
                else round(self.ram_compare_s, 3), "switch": self.switch}


@dataclass
class PingPongResult:
    ok: bool
    records: list[HopRecord]
    failure: HopFailure | None
    artifacts: Path
    verified_blocks: dict[str, int] = field(default_factory=dict)  # disk blocks read back
    writes: dict[str, int] = field(default_factory=dict)
    final: dict[str, Verified] = field(default_factory=dict)   # the end-of-run checks
    load_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    injected: list[str] = field(default_factory=list)
    stopped_by: str | None = None   # "SIGINT"/"SIGTERM" when a signal ended the run
    final_checks: str = "not run"   # "done", or why not
    incomplete: str | None = None   # why a run without a failed hop is still not ok
    kept_states: list[KeptState] = field(default_factory=list)
    boot_s: float = 0.0
    login_s: float | None = None   # the new SSH login to the last process, at the end
    notes: list[str] = field(default_factory=list)  # e.g. how two QEMU versions differ
    stops: dict[int, StopRecord] = field(default_factory=dict)   # hop -> switch point reached

    def read_back(self, name: str) -> int:
        """Units load `name`'s checks read back and found right: after every hop and
        at the end (each write is read back once, by the first check after it)."""
        return (sum(r.verified[name].units for r in self.records if name in r.verified)
                + (self.final[name].units if name in self.final else 0))


def switch_rows(records: Sequence[HopRecord], stops: dict[int, StopRecord],
                failure: HopFailure | None, plan: SwitchPlan | None) -> list[dict[str, Any]]:
    """Per switched hop: where the source stopped (StopRecord.as_dict), the verdict
    ("ok" or the failure's kind) and the hop's time with its stop; a failing hop
    that never reached its point is named from `plan`."""
    out: list[dict[str, Any]] = []
    for record in records:
        if record.stop is None:
            continue
        out.append({"hop": record.stats.hop, **record.stop.as_dict(), "verdict": "ok",
                    "hop_s": round(record.stats.total_s + record.stop.stop_s, 3)})
    if failure is None:
        return out
    stop = stops.get(failure.hop)
    row: dict[str, Any]
    if stop is not None:
        row = stop.as_dict()
    elif plan is not None:
        point = plan.for_hop(failure.hop)
        row = {"spec": point.spec(), "steps": point.steps, "address": None, "where": None,
               "instruction": None}
    else:
        return out
    out = [r for r in out if r["hop"] != failure.hop]
    out.append({"hop": failure.hop, **row, "verdict": failure.kind, "hop_s": None})
    return out
