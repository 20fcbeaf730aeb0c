"""INT#x cost by bridge depth: the same shared-line load at depth 0..4.

For each depth a fresh guest gets K virtio devices (MSI-X off) on one INT#x
line D pci-bridges deep and runs `harness.scenarios.intx.stress.run_stress` for T
seconds.  Prints interrupts/s and I/O/s per depth and their ratio to depth 0
(the seed's "Better modeling for PCI INT#x": QEMU walks the bridge chain on
every interrupt, so deeper should not be slower if the route were cached).

    .venv/bin/python benchmarks/intx_depth.py --machine q35 --devices 3 --seconds 8 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.factory import GuestFactory, RunSettings
from harness.scenarios.intx.stress import run_stress, shared_line_layout
from harness.workloads.payload import PayloadServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machine", default="q35")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--max-depth", type=int, default=4)
    parser.add_argument("--accel", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    factory = GuestFactory(RunSettings(accel=args.accel))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="intx-depth-") as tmp, PayloadServer() as server:
        for depth in range(args.max_depth + 1):
            layout = shared_line_layout(args.machine, [depth] * args.devices)
            with factory.guest(layout.topology, Path(tmp) / f"d{depth}",
                               extra_args=layout.extra_args) as guest:
                report = run_stress(guest, layout, server, args.seconds)
            rows.append({"depth": depth, "ok": report["ok"], "failures": report["failures"],
                         "interrupts_per_s": report["interrupts_per_s"],
                         "io_per_s": report["io_per_s"]})
            print(f"depth {depth}: {report['interrupts_per_s']} irq/s, {report['io_per_s']} "
                  f"I/O/s, ok={report['ok']}", file=sys.stderr, flush=True)
    base = rows[0]
    for row in rows:
        row["interrupt_ratio"] = round(row["interrupts_per_s"] / base["interrupts_per_s"], 3) \
            if base["interrupts_per_s"] else None
        row["io_ratio"] = round(row["io_per_s"] / base["io_per_s"], 3) if base["io_per_s"] else None
    if args.json:
        print(json.dumps({"machine": args.machine, "devices": args.devices,
                          "seconds": args.seconds, "depths": rows}))
    else:
        print(f"{'depth':>5} {'irq/s':>9} {'ratio':>6} {'I/O/s':>9} {'ratio':>6} ok")
        for r in rows:
            print(f"{r['depth']:>5} {r['interrupts_per_s']:>9} {r['interrupt_ratio']!s:>6} "
                  f"{r['io_per_s']:>9} {r['io_ratio']!s:>6} {r['ok']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
