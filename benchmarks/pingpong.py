#!/usr/bin/env python3
"""Ping-pong migration benchmark: per-hop time and downtime, p50/p95, where the time goes.

    .venv/bin/python benchmarks/pingpong.py [--machine q35] [--hops 10] [--load none|write|mixed]
                                            [--disk ahci|virtio-blk|both] [--transport unix|tcp]

A hop is counted from the `migrate` command to the guest answering SSH on the
new process: a round trip on the SSH session that follows the guest from
process to process (slirp migrates its TCP connection; harness/guest/hopsocket.py).
The destination is spawned (-incoming defer) while the previous hop is being
checked, so its start-up is shown separately ("launch, overlapped").  The
checks after a hop (console, PCI views, load progress) are shown too: they pay
for TCG translating the guest's code anew in every fresh process.
Target here: 0.5 s or less per hop for a 512 MiB q35 guest under TCG.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.cli.pingpong import build_topology
from harness.factory import GuestFactory, RunSettings
from harness.scenarios.migration.pingpong import PingPong, PingPongOptions, disk_targets
from harness.stats import percentile

TARGET_S = 0.5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--machine", default="q35")
    p.add_argument("--hops", type=int, default=10)
    p.add_argument("--load", choices=("none", "write", "mixed"), default="write")
    p.add_argument("--disk", choices=("ahci", "virtio-blk", "both"), default="both")
    p.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--accel", default="tcg")
    args = p.parse_args()

    factory = GuestFactory(RunSettings(accel=args.accel, snapshot=False),
                           progress=lambda m: print(f"  {m}", file=sys.stderr))
    topology = build_topology(args.machine, args.disk)
    kinds = ("ahci", "virtio-blk") if args.disk == "both" else (args.disk,)
    targets = disk_targets(topology, kinds) if args.load != "none" else ()
    with tempfile.TemporaryDirectory(prefix="pingpong-bench-") as tmp:
        run = PingPong(factory.plan(topology), Path(tmp), PingPongOptions(
            hops=args.hops, seed=args.seed, load=args.load, transport=args.transport,
            disks=targets), progress=lambda m: print(f"  {m}", file=sys.stderr))
        result = run.run()
    if result.failure is not None:
        print(f"FAILED: {result.failure.describe()}")
        return 1
    recs = [r.stats for r in result.records]
    mem = topology.memory // 2**20
    print(f"pingpong benchmark: {args.machine}, {mem} MiB, {factory.accel.name}, "
          f"load {args.load} on {args.disk}, {args.transport} socket, {len(recs)} hops, "
          f"host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'hop':>3} {'total s':>8} {'migrate':>8} {'resume':>7} {'ssh':>6} "
          f"{'downtime ms':>11} {'RAM MB':>7} {'launch*':>8} {'checks':>7}")
    for r, rec in zip(recs, result.records):
        print(f"{r.hop:>3} {r.total_s:>8.3f} {r.migrate_s:>8.3f} {r.resume_s:>7.3f} "
              f"{r.ssh_s:>6.3f} {r.downtime_ms or 0:>11.0f} {(r.ram_bytes or 0) / 1e6:>7.1f} "
              f"{r.launch_s:>8.3f} {rec.check_s:>7.3f}")
    total = [r.total_s for r in recs]
    p50, p95 = percentile(total, 50), percentile(total, 95)
    downs = [r.downtime_ms or 0.0 for r in recs]
    print(f"hop time: p50 {p50:.3f} s, p95 {p95:.3f} s (target {TARGET_S} s: "
          f"{'met' if p50 is not None and p50 <= TARGET_S else 'NOT met'} at p50)")
    print(f"downtime: p50 {percentile(downs, 50):.0f} ms, max {max(downs):.0f} ms")
    parts = {"migrate (stream, query-migrate completed)": [r.migrate_s for r in recs],
             "resume (destination leaves inmigrate)": [r.resume_s for r in recs],
             "ssh (the session answers on the destination)": [r.ssh_s for r in recs]}
    mean_total = statistics.mean(total)
    print("where a hop's time goes (mean):")
    for name, values in parts.items():
        share = statistics.mean(values)
        print(f"  {name:<45} {share:.3f} s  {100 * share / mean_total:4.0f} %")
    print(f"  {'destination launch (overlapped, not counted)':<45} "
          f"{statistics.mean(r.launch_s for r in recs):.3f} s")
    print(f"  {'checks after the hop (not counted)':<45} "
          f"{statistics.mean(rec.check_s for rec in result.records):.3f} s")
    cycle = [r.total_s + rec.check_s for r, rec in zip(recs, result.records)]
    print(f"  hop + checks (one crash-hunt cycle): p50 {percentile(cycle, 50):.3f} s")
    if result.login_s is not None:
        print(f"  a new SSH login to the last process, at the end: {result.login_s:.3f} s")
    print(f"  RAM sent per hop: {statistics.mean((r.ram_bytes or 0) for r in recs) / 1e6:.0f} MB "
          f"(init_on_free=1 guest: freed pages go as zero pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
