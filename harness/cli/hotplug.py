"""`pci-harness hotplug-stress`: plug/unplug cycles behind bridges, checked three ways.

A thin face over scenarios/hotplug_stress.py: boots the stress machine of
--machine, runs the cycles, prints progress on stderr and a summary (or one
JSON object with --json).  Exit 1 when any cycle failed, with the artifact
directory (views of the failed cycle, console, QMP transcript) named.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from harness.cli.common import ArtifactDir, add_common_options, progress, settings_from
from harness.errors import UserError
from harness.factory import GuestFactory


def _cycles(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--cycles must be at least 1")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("hotplug-stress",
                              help="plug/unplug disks and NICs behind bridges N times")
    p.add_argument("--machine", choices=("pc", "q35"), required=True)
    p.add_argument("--cycles", type=_cycles, default=10, help="plug/unplug cycles (default 10)")
    p.add_argument("--seed", type=int, help="chooses drivers, slots and data (default: random, "
                                            "printed)")
    add_common_options(p)
    p.set_defaults(func=cmd_hotplug_stress)


def cmd_hotplug_stress(args: argparse.Namespace) -> int:
    from harness.scenarios.hotplug_stress import run_stress, stress_topology
    from harness.stats import latency

    settings = settings_from(args)
    topology = stress_topology(args.machine)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    if seed < 0:
        raise UserError("--seed must not be negative")
    factory = GuestFactory(settings, progress=progress)
    artifacts = ArtifactDir("hotplug-stress", settings.keep_artifacts)
    ok = False
    try:
        progress(f"hotplug-stress {args.machine}: {args.cycles} cycles, seed {seed} "
                  f"(re-run with --seed {seed}); artifacts in {artifacts.path}")
        with factory.guest(topology, artifacts.path / "guest") as guest:
            result = run_stress(guest, args.cycles, seed, artifacts.path, progress)
        ok = result.ok
    finally:
        artifacts.finish(ok)
    per_cycle = result.per_cycle()
    summary: dict[str, Any] = {
        "ok": result.ok, "machine": args.machine, "seed": seed, "cycles": result.cycles,
        "failures": [f.to_dict() for f in result.failures],
        "plug_s": latency(result.plug_s), "unplug_s": latency(result.unplug_s),
        "mechanisms": result.mechanisms, "per_cycle_s": per_cycle,
        "artifacts": None if ok and not settings.keep_artifacts else str(artifacts.path),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        plug, unplug = summary["plug_s"], summary["unplug_s"]
        print(f"hotplug-stress {args.machine} seed {seed}: {result.cycles} cycles, "
              f"{len(result.failures)} failure(s); plug p50 {plug['p50']} s p95 {plug['p95']} s; "
              f"unplug p50 {unplug['p50']} s p95 {unplug['p95']} s")
        print(f"per cycle: {per_cycle['wall']:.2f} s, of which waiting for QEMU/guest events "
              f"{per_cycle.get('event', 0):.2f} s; harness overhead {per_cycle['overhead']:.2f} s "
              f"(guest commands {per_cycle.get('guest', 0):.2f} s, QMP {per_cycle.get('qmp', 0):.2f}"
              f" s, model {per_cycle.get('model', 0):.3f} s, own {per_cycle['own']:.3f} s)")
        for f in result.failures:
            print(f"  cycle {f.cycle} {f.step}: {f.what}")
    if not result.ok:
        print(f"pci-harness hotplug-stress: FAILED; artifacts in {artifacts.path}",
              file=sys.stderr)
        return 1
    return 0
