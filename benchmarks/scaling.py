#!/usr/bin/env python3
"""pytest-xdist scaling: the same real-QEMU subset with -n 1 and -n 2.

    .venv/bin/python benchmarks/scaling.py [--rounds N] [--accel tcg] [--json]
                                           [-- PYTEST SELECTION ARGS]

Each round runs the subset once per worker count (the order alternates from
round to round so that a change in background load hits both sides) and
records the wall time of the whole pytest command, which is what a nightly
costs.  Prints the median wall time per worker count, the ratio
t(-n 1) / t(-n 2) and the load average seen before each run (other QEMUs on
a shared host skew the figure).  Target on 2 cores under TCG: 1.7x or better.

A run that does not pass invalidates the figure: the script then exits 1.
Before measuring, one warm-up boot per machine fills the image and snapshot
caches (a rebuild inside a measured run would swamp the figure), and with
`--quiet-load L` each run waits (up to `--quiet-wait` seconds) until the
1-minute load average is below L.
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
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Eleven guest tests, 3-30 s each under TCG (boots, seed items with a known
#: failure and a pass), which two workers can split evenly; override with
#: arguments after `--`.
DEFAULT_SELECTION = ["tests/pci/test_boot.py", "tests/pci/seed/test_virtio_pcie_memory_bars.py",
                     "tests/pci/seed/test_subtractive_decode.py",
                     "tests/pci/seed/test_intx_active_low.py"]
TARGET = 1.7


def run_once(workers: int, accel: str, selection: list[str], workdir: Path) -> dict[str, float]:
    junit = workdir / f"junit-{workers}-{time.monotonic_ns()}.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
            f"--accel={accel}", f"--junitxml={junit}", f"--artifacts-dir={workdir / 'artifacts'}",
            *selection]
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=3600)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"scaling: -n {workers} run failed (pytest exit {proc.returncode}); "
                         f"the figure would be meaningless:\n{proc.stdout[-3000:]}")
    root = ET.parse(junit).getroot()
    cases = list(root.iter("testcase"))
    test_time = sum(float(c.get("time", "0")) for c in cases)
    return {"wall_s": round(wall, 2), "test_s": round(test_time, 2), "tests": len(cases),
            "load_before": round(load, 2)}


WARMUP = ["tests/pci/test_boot.py::test_guest_boots_and_sees_the_topology_devices"]


def wait_quiet(limit: float | None, wait_s: float) -> None:
    """Wait until the load average drops below `limit` or `wait_s` passed."""
    deadline = time.monotonic() + wait_s
    while limit is not None and os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet-load", type=float, default=None, metavar="L",
                        help="before each run, wait for a 1-minute load average below L")
    parser.add_argument("--quiet-wait", type=float, default=600.0, metavar="S",
                        help="longest wait for --quiet-load (default 600 s)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("selection", nargs="*", help="pytest arguments (after --)")
    args = parser.parse_args()
    selection = args.selection or DEFAULT_SELECTION
    samples: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="pci-harness-scaling-") as tmp:
        if not args.no_warmup:
            run_once(2, args.accel, WARMUP, Path(tmp))
        for index in range(args.rounds):
            for workers in ((2, 1) if index % 2 == 0 else (1, 2)):
                wait_quiet(args.quiet_load, args.quiet_wait)
                sample = run_once(workers, args.accel, selection, Path(tmp))
                samples[workers].append(sample)
                print(f"round {index + 1}: -n {workers}: {sample['wall_s']:.1f} s wall, "
                      f"{sample['tests']} tests, {sample['test_s']:.1f} s test time, "
                      f"load {sample['load_before']:.2f} before", file=sys.stderr, flush=True)
    wall = {n: statistics.median(s["wall_s"] for s in samples[n]) for n in samples}
    ratio = wall[1] / wall[2]
    # Each round's own ratio: its two runs saw nearly the same background load.
    rounds = [round(one["wall_s"] / two["wall_s"], 2) for one, two in zip(samples[1], samples[2])]
    result = {"selection": selection, "rounds": args.rounds, "cores": os.cpu_count(),
              "wall_s": {f"n{n}": round(w, 2) for n, w in wall.items()},
              "ratio": round(ratio, 2), "round_ratios": rounds, "target": TARGET, "meets_target": ratio >= TARGET,
              "samples": {f"n{n}": s for n, s in samples.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"-n 1: {wall[1]:.1f} s   -n 2: {wall[2]:.1f} s   ratio {ratio:.2f}x "
              f"(target {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'}) "
              f"on {os.cpu_count()} cores; per round {', '.join(f'{r:.2f}x' for r in rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
