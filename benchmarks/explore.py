#!/usr/bin/env python3
"""Cost of one explored machine against a cold `pci-harness compare` of the same machine.

    .venv/bin/python benchmarks/explore.py [--examples N] [--seed S] [--qemu-binary Q]

Draws examples 0..N-1 of seed S (distinct machines only) and measures each two
ways, alternating so both see the same host load:
  explore: MachineCheck in one process (boot, three views, console, placement
           probe), as `pci-harness explore` runs it;
  compare: `pci-harness compare --no-snapshot FILE` as a fresh process on the
           machine's TOML (what a person pays for one machine: interpreter,
           accelerator verdict, boot, views).
Prints per-machine seconds, the medians and the explore/compare ratio (goal:
<= 1.5), and the load average, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.factory import GuestFactory, RunSettings
from harness.qemu.devprops import device_properties
from harness.qemu.drivers import DRIVERS
from harness.qemu.probe import probed_facts
from harness.scenarios.explore.case import topology_toml
from harness.scenarios.explore.check import MachineCheck
from harness.scenarios.explore.draws import Space, draw
from harness.scenarios.explore.run import probe_driver_for
from harness.scenarios.explore.strategies import drawable_drivers

CLI = Path(sys.executable).with_name("pci-harness")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--qemu-binary", default=None)
    parser.add_argument("--timeout-multiplier", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = RunSettings(qemu_binary=args.qemu_binary, accel="tcg", snapshot=False,
                           timeout_multiplier=args.timeout_multiplier)
    factory = GuestFactory(settings, progress=lambda m: None, announce_accel=False)
    props = device_properties(factory.binary, DRIVERS)
    space = Space.of(props, probed_facts(factory.binary).port_link_speeds)
    work = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    check = MachineCheck(factory, work, probe_driver=probe_driver_for(drawable_drivers(props)))
    rows, seen, index = [], set(), 0
    load0 = os.getloadavg()[0]
    while len(rows) < args.examples:
        topo = draw(args.seed, index, space)
        index += 1
        if topo.cache_key() in seen:
            continue
        seen.add(topo.cache_key())
        outcome = check(topo)
        path = work / f"m{index}.toml"
        path.write_text(topology_toml(topo))
        t0 = time.monotonic()
        proc = subprocess.run([str(CLI), "compare", "--no-snapshot", "--accel", "tcg",
                               "--timeout-multiplier", str(args.timeout_multiplier),
                               *(["--qemu-binary", args.qemu_binary] if args.qemu_binary
                                 else []), str(path)], capture_output=True, text=True,
                              check=False)
        compare_s = time.monotonic() - t0
        rows.append({"devices": len(topo.devices), "explore_s": round(outcome.seconds, 2),
                     "compare_s": round(compare_s, 2), "verdict": outcome.kind,
                     "compare_status": proc.returncode})
        if not args.json:
            print(f"{len(topo.devices):3d} devices  explore {outcome.seconds:6.2f} s  "
                  f"compare {compare_s:6.2f} s  ({outcome.kind}, compare exit "
                  f"{proc.returncode})", flush=True)
    e = statistics.median(r["explore_s"] for r in rows)
    c = statistics.median(r["compare_s"] for r in rows)
    ratios = [r["explore_s"] / r["compare_s"] for r in rows]
    result = {"qemu": factory.binary.version, "examples": len(rows), "seed": args.seed,
              "explore_p50_s": round(e, 2), "compare_p50_s": round(c, 2),
              "ratio_p50": round(statistics.median(ratios), 2),
              "ratio_max": round(max(ratios), 2), "goal_ratio": 1.5,
              "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)], "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"QEMU {result['qemu']}: explore p50 {e:.2f} s, cold compare p50 {c:.2f} s, "
              f"ratio p50 {result['ratio_p50']} (max {result['ratio_max']}; goal <= 1.5); "
              f"load average {result['loadavg'][0]} -> {result['loadavg'][1]} on "
              f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
