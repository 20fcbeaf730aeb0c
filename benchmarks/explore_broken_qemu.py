#!/usr/bin/env python3
"""Does `explore` find a QEMU broken on purpose, shrink it to that device, and replay it?

    .venv/bin/python benchmarks/explore_broken_qemu.py [--minutes 5] [--seed 11]
                     [--driver virtio-rng-pci] [--prop vectors=5] [--qemu-binary Q]

Writes a wrapper script that rewrites one property of one device kind (every
`-device DRIVER,...` gets PROP, replacing its own value) before exec-ing the
real QEMU, runs `pci-harness explore --minutes M --seed S` against it, then
replays the saved case on the wrapper (must be red, the same failure) and on
the real QEMU (must be green).  Prints when the failure was found, how long
shrinking took, the devices left and both replay verdicts; exit 0 when every
acceptance point holds (found, <= 3 devices, that driver, found + shrunk
within 5 minutes, red on broken, green on real).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = Path(sys.executable).with_name("pci-harness")

WRAPPER = """#!/bin/bash
# A QEMU broken on purpose: every {driver} gets {prop}={value}.
args=()
for a in "$@"; do
  case "$a" in
    {driver},*help*) ;;
    {driver},*) a=$(printf '%s' "$a" | sed -E 's/,{prop}=[^,]*//'),{prop}={value} ;;
  esac
  args+=("$a")
done
exec {real} "${{args[@]}}"
"""


def explore(args: argparse.Namespace, *extra: str) -> dict:
    proc = subprocess.run([str(CLI), "explore", "--timeout-multiplier",
                           str(args.timeout_multiplier), "--json", *extra],
                          capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr[-3000:] if args.verbose else "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--driver", default="virtio-rng-pci")
    parser.add_argument("--prop", default="vectors=5")
    parser.add_argument("--qemu-binary", default=shutil.which("qemu-system-x86_64"))
    parser.add_argument("--timeout-multiplier", type=float, default=4.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="explore-broken-"))
    prop, value = args.prop.split("=", 1)
    wrapper = work / "qemu-system-x86_64"
    wrapper.write_text(WRAPPER.format(driver=args.driver, prop=prop, value=value,
                                      real=args.qemu_binary))
    wrapper.chmod(0o755)
    load0 = os.getloadavg()[0]
    run = explore(args, "--minutes", str(args.minutes), "--seed", str(args.seed),
                  "--qemu-binary", str(wrapper), "--save", str(work / "found"),
                  "--no-database")
    load1 = os.getloadavg()[0]
    mine = [f for f in run["failures"]
            if any(p.get("driver") == args.driver for p in f["problems"])]
    print(f"explore on the broken QEMU ({args.driver} {args.prop}), seed {args.seed}: "
          f"{run['examples']} machines, {len(run['failures'])} failure(s); per machine p50 "
          f"{run['per_topology_s']['p50']} s, p95 {run['per_topology_s']['p95']} s; load "
          f"average {load0:.1f} -> {load1:.1f}")
    if not mine:
        print("NOT FOUND: no failure names the broken driver")
        return 1
    found = mine[0]
    total = found["found_after_s"] + found["shrink_s"]
    drivers = sorted({d for d in [p.get("driver") for p in found["problems"]]})
    print(f"found after {found['found_after_s']} s in a machine of "
          f"{found['original_devices']} devices; shrunk in {found['shrink_s']} s "
          f"({found['shrink_boots']} boots) to {found['devices']} device(s), problems on "
          f"{drivers}: {found['difference'][:200]}")
    red = explore(args, "--replay", found["saved"], "--qemu-binary", str(wrapper))
    green = explore(args, "--replay", found["saved"], "--qemu-binary", args.qemu_binary)
    print(f"replay on the broken QEMU: {'red' if not red['ok'] else 'GREEN'} (same failure: "
          f"{red.get('same_failure')}); on the real one: "
          f"{'green' if green['ok'] else 'RED: ' + '; '.join(green['failures'])}")
    print(f"case: {found['saved']}")
    ok = (found["devices"] <= 3 and drivers == [args.driver] and total <= 300
          and not red["ok"] and red.get("same_failure") and green["ok"])
    print("acceptance: " + ("met" if ok else "NOT met") + f" (found + shrunk in {total:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
