#!/usr/bin/env python3
"""Boot-to-SSH, cold and restored from a snapshot, side by side.

    .venv/bin/python benchmarks/boot.py [--runs N] [--machines pc,q35] [--accel tcg]

For each machine: N cold boots (no snapshot) and N restores (snapshot built
first, not counted), each broken down into phases measured from the moment
QEMU is spawned:
  cold:     qemu_start (QMP up) | firmware+kernel (to /init) | init (to sshd) | ssh
  restored: qemu_start (QMP up) | load RAM (to RESUME) | fix-up (console) | ssh
Prints median and min-max per phase and the restored/cold ratio.  Targets
(TCG, 2 cores): cold <= 3 s, restored <= 1 s and <= 1/4 of cold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.factory import GuestFactory, RunSettings
from harness.topology import default_topology

PHASES = {
    "cold": [("qemu_start", "qmp_ready", None), ("firmware+kernel", "init_started", "qmp_ready"),
             ("init", "sshd_ready", "init_started"), ("ssh", "ssh_connected", "sshd_ready")],
    "restored": [("qemu_start", "qmp_ready", None), ("load RAM", "init_started", "qmp_ready"),
                 ("fix-up", "sshd_ready", "init_started"), ("ssh", "ssh_connected", "sshd_ready")],
}


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f}  ({min(values):.3f}-{max(values):.3f})"


def measure(factory: GuestFactory, machine: str, runs: int, workdir: Path,
            kernel_args: tuple[str, ...] = ()) -> list[dict]:
    samples = []
    for i in range(runs):
        with factory.guest(default_topology(machine), workdir / f"{machine}-{i}",
                           kernel_args=kernel_args) as guest:
            samples.append(guest.timings.as_dict())
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--machines", default="pc,q35")
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--firmware", default="seabios", choices=("seabios", "qboot"))
    parser.add_argument("--kernel-args", default="", help="extra guest kernel parameters")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    quiet = lambda message: None
    cold = GuestFactory(RunSettings(accel=args.accel, snapshot=False, firmware=args.firmware),
                        progress=quiet, announce_accel=False)
    warm = GuestFactory(RunSettings(accel=args.accel, snapshot=True, firmware=args.firmware),
                        progress=quiet, accel=cold.accel)
    kargs = tuple(args.kernel_args.split())
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="pcih-bench-") as tmp:
        for machine in args.machines.split(","):
            print(f"# {machine}: {args.runs} cold boots ...", file=sys.stderr, flush=True)
            results.setdefault(machine, {})["cold"] = measure(cold, machine, args.runs, Path(tmp),
                                                               kargs)
            measure(warm, machine, 1, Path(tmp) / "prime", kargs)  # builds the snapshot
            print(f"# {machine}: {args.runs} restores ...", file=sys.stderr, flush=True)
            results[machine]["restored"] = measure(warm, machine, args.runs, Path(tmp) / "warm",
                                                   kargs)
    print(f"QEMU {cold.binary.version}, accel {cold.accel.name}, firmware {args.firmware}, "
          f"kernel args {args.kernel_args or '-'}, {args.runs} runs each; seconds, median (min-max)")
    summary = {}
    for machine, kinds in results.items():
        print(f"\n{machine}")
        totals = {}
        for kind, samples in kinds.items():
            totals[kind] = [s["ssh_connected"] for s in samples]
            print(f"  {kind:9s} boot-to-SSH {_stats(totals[kind])}")
            for label, end, start in PHASES[kind]:
                values = [s[end] - (s[start] if start else 0.0) for s in samples]
                print(f"    {label:16s} {_stats(values)}")
        ratio = statistics.median(totals["restored"]) / statistics.median(totals["cold"])
        print(f"  restored/cold ratio {ratio:.2f} (target <= 0.25)")
        summary[machine] = {k: {"p50": statistics.median(v), "min": min(v), "max": max(v)}
                            for k, v in totals.items()} | {"ratio": ratio}
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
