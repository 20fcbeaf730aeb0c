"""`pci-harness hotplug-stress`: plug/unplug cycles behind bridges, checked three ways.

A thin face over scenarios/hotplug/stress.py: boots the stress machine of
--machine, runs the cycles, prints progress on stderr and a summary (or one
JSON object with --json).  Exit 1 when any cycle failed, with the artifact
directory (views of the failed cycle, console, QMP transcript) named.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.errors import UserError


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
    from harness.scenarios.hotplug import stress as hotplug_stress
    from harness.stats import latency

    topology = hotplug_stress.stress_topology(args.machine)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    if seed < 0:
        raise UserError("--seed must not be negative")

    def body(run: VerbRun) -> Result:
        factory = run.factory
        progress(f"hotplug-stress {args.machine}: {args.cycles} cycles, seed {seed} "
                 f"(re-run with --seed {seed}); artifacts in {run.artifacts}")
        with factory.guest(topology, run.artifacts / "guest") as guest:
            result = hotplug_stress.run_stress(guest, args.cycles, seed, run.artifacts,
                                               progress)
        return {
            "ok": result.ok, "machine": args.machine, "seed": seed, "cycles": result.cycles,
            "failures": [f.to_dict() for f in result.failures],
            "plug_s": latency(result.plug_s), "unplug_s": latency(result.unplug_s),
            "mechanisms": result.mechanisms, "per_cycle_s": result.per_cycle(),
        }

    return run_verb(args, "hotplug-stress", body, _print_summary)


def _print_summary(summary: Result) -> None:
    plug, unplug, per_cycle = summary["plug_s"], summary["unplug_s"], summary["per_cycle_s"]
    print(f"hotplug-stress {summary['machine']} seed {summary['seed']}: {summary['cycles']} "
          f"cycles, {len(summary['failures'])} failure(s); plug p50 {plug['p50']} s p95 "
          f"{plug['p95']} s; unplug p50 {unplug['p50']} s p95 {unplug['p95']} s")
    print(f"per cycle: {per_cycle['wall']:.2f} s, of which waiting for QEMU/guest events "
          f"{per_cycle.get('event', 0):.2f} s; harness overhead {per_cycle['overhead']:.2f} s "
          f"(guest commands {per_cycle.get('guest', 0):.2f} s, QMP {per_cycle.get('qmp', 0):.2f}"
          f" s, model {per_cycle.get('model', 0):.3f} s, own {per_cycle['own']:.3f} s)")
    for f in summary["failures"]:
        print(f"  cycle {f['cycle']} {f['step']}: {f['what']}")
