#!/usr/bin/env python3
"""Switched hop vs normal hop: what stopping the vCPU at a guest instruction costs.

    .venv/bin/python benchmarks/switchpoint.py [--hops 4] [--rounds 3] [--switch-at ahci_qc_issue]
                                               [--step 3] [--qemu-binary PATH]

Two ping-pong runs on the same q35 machine with the same write load on its AHCI
and virtio-blk disks: one with normal hops, one with every hop stopped at
--switch-at (plus --step single-steps) through the gdbstub before it migrates
(harness/scenarios/migration/switchstop.py).  A switched hop counts the stop (a quiet SSH
session, attaching, running to the breakpoint, the steps, reading the PC and
the code there) on top of the hop (migrate -> the guest answers on the
destination); the cycle adds the checks after the hop, which both runs make.
Goal: a switched hop costs at most 1.5x a normal one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cli.pingpong import build_topology
from harness.factory import GuestFactory, RunSettings
from harness.scenarios.migration.pingpong import PingPong, PingPongOptions, disk_targets
from harness.scenarios.migration.switchpoint import SwitchPlan, SwitchPoint
from harness.stats import percentile

GOAL = 1.5


def _run(factory: GuestFactory, hops: int, switch: SwitchPlan | None) -> list[tuple[float, float]]:
    """(hop s, cycle s) per hop: the stop included for a switched hop."""
    topology = build_topology("q35", "both")
    with tempfile.TemporaryDirectory(prefix="switch-bench-") as tmp:
        run = PingPong(factory.plan(topology), Path(tmp), PingPongOptions(
            hops=hops, seed=3, load="write", switch=switch,
            disks=disk_targets(topology, ("ahci", "virtio-blk"))),
            progress=lambda m: print(f"  {m}", file=sys.stderr))
        result = run.run()
    if result.failure is not None:
        raise SystemExit(f"FAILED: {result.failure.describe()}")
    out = []
    for record in result.records:
        stop = record.stop.stop_s if record.stop is not None else 0.0
        hop = record.stats.total_s + stop
        out.append((hop, hop + record.check_s))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hops", type=int, default=4, help="hops per run")
    p.add_argument("--rounds", type=int, default=3, help="normal + switched runs, alternating")
    p.add_argument("--switch-at", default="ahci_qc_issue")
    p.add_argument("--step", type=int, default=3)
    p.add_argument("--qemu-binary")
    args = p.parse_args()
    factory = GuestFactory(RunSettings(qemu_binary=args.qemu_binary, accel="tcg",
                                       snapshot=False),
                           progress=lambda m: print(f"  {m}", file=sys.stderr))
    plan = SwitchPlan("at", point=SwitchPoint(args.switch_at, steps=args.step))
    normal: list[tuple[float, float]] = []
    switched: list[tuple[float, float]] = []
    for _ in range(args.rounds):   # alternating: a shared host's load hits both alike
        normal += _run(factory, args.hops, None)
        switched += _run(factory, args.hops, plan)
    print(f"switch-point benchmark: q35, write load on AHCI + virtio-blk, QEMU "
          f"{factory.binary.version}, {factory.accel.name}, {args.rounds} x {args.hops} hops "
          f"each, host load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = {}
    label = f"switched ({args.switch_at} +{args.step} steps)"
    for name, values in (("normal", normal), (label, switched)):
        hop = percentile([v[0] for v in values], 50) or 0.0
        cycle = percentile([v[1] for v in values], 50) or 0.0
        rows[name] = (hop, cycle)
        print(f"  {name:<40} hop p50 {hop:.3f} s   hop + checks p50 {cycle:.3f} s")
    (n_hop, n_cycle), (s_hop, s_cycle) = rows.values()
    ratio_hop, ratio_cycle = s_hop / n_hop, s_cycle / n_cycle
    print(f"ratio switched/normal: hop {ratio_hop:.2f}x, hop + checks {ratio_cycle:.2f}x "
          f"(goal <= {GOAL}x: {'met' if ratio_cycle <= GOAL else 'NOT met'} per cycle, "
          f"{'met' if ratio_hop <= GOAL else 'NOT met'} per hop alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
