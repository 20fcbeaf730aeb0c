"""The pingpong verb's switch-point options: --switch-at, --step, --switch-sweep, --steps.

What they mean is harness/scenarios/migration/switchpoint.py; here they become a
SwitchPlan, the options that replay a run or one boundary, and the per-boundary
table of the JSON report.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from harness.errors import UserError
from harness.scenarios.migration.data import PingPongResult, switch_rows
from harness.scenarios.migration.switchhalt import parse_io_error
from harness.scenarios.migration.switchpoint import SwitchPlan, SwitchPoint, parse_switch_spec

DEFAULT_STEPS = 40


def add_switch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--switch-at", metavar="SPEC",
                   help="migrate every hop with the guest's vCPU stopped at SPEC (through "
                        "QEMU's gdbstub): SYMBOL, SYMBOL+OFFSET, SYMBOL@N (Nth hit), "
                        "SYMBOL:return, or random:SYM1,SYM2 (a seeded pick per hop: a "
                        "symbol and 0..--steps single-steps); symbols from the guest's "
                        "/proc/kallsyms, modules included")
    p.add_argument("--step", type=int, default=0, metavar="K",
                   help="with --switch-at: K single-steps after the stop")
    p.add_argument("--switch-sweep", metavar="SYMBOL",
                   help="one hop per instruction boundary of the path from SYMBOL: hop i "
                        "stops there and single-steps i-1 times (--steps hops)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help=f"boundaries of --switch-sweep (default {DEFAULT_STEPS}); for "
                        "random: the step counts drawn from 0..N-1")


def switch_plan(args: argparse.Namespace, seed: int,
                disks: tuple[str, ...] = ()) -> SwitchPlan | None:
    """The run's SwitchPlan, or None; a bad combination is a UserError.
    DISKS: the loaded disks' names, for io-error:OP:DISK."""
    if args.switch_at and args.switch_sweep:
        raise UserError("--switch-at and --switch-sweep both say where to stop",
                        fix="give one of them")
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    if steps < 1 or args.step < 0:
        raise UserError("--steps must be at least 1 and --step cannot be negative")
    if args.switch_sweep:
        point = parse_switch_spec(args.switch_sweep)
        if not isinstance(point, SwitchPoint) or point.spec() != point.symbol:
            raise UserError(f"--switch-sweep {args.switch_sweep!r}: a sweep starts at a "
                            "function's entry", fix="give a plain SYMBOL, e.g. ahci_qc_issue")
        return SwitchPlan("sweep", point=point)
    if not args.switch_at:
        if args.step or args.steps is not None:
            raise UserError("--step and --steps need --switch-at or --switch-sweep")
        return None
    if args.switch_at.startswith("io-error"):
        if args.step:
            raise UserError("--step with io-error: the vCPU is not stopped by the gdbstub",
                            fix="drop --step")
        return SwitchPlan("io-error", point=parse_io_error(args.switch_at, disks))
    parsed = parse_switch_spec(args.switch_at, args.step)
    if isinstance(parsed, SwitchPlan):
        if args.step:
            raise UserError("--step with random: the steps are drawn per hop",
                            fix="bound them with --steps N instead")
        return SwitchPlan("random", symbols=parsed.symbols, max_steps=steps, seed=seed)
    return SwitchPlan("at", point=parsed)


def sweep_hops(args: argparse.Namespace) -> int | None:
    """A sweep runs one hop per boundary."""
    if not args.switch_sweep:
        return None
    return args.steps if args.steps is not None else DEFAULT_STEPS


def switch_argv(args: argparse.Namespace) -> list[str]:
    """The switch options for reproduce.sh (the whole run up to its last hop)."""
    out: list[str] = []
    if args.switch_at:
        out += ["--switch-at", args.switch_at]
    if args.step:
        out += ["--step", str(args.step)]
    if args.switch_sweep:
        out += ["--switch-sweep", args.switch_sweep]
    if args.steps is not None and not args.switch_sweep:
        out += ["--steps", str(args.steps)]
    return out


def boundaries(result: PingPongResult, plan: SwitchPlan, base: list[str]) -> list[dict[str, Any]]:
    """Per hop: where it stopped, the verdict, the hop's time (stop included); the
    failing hop with the command that replays its switch point alone on a fresh
    guest (BASE: the run's argv without --hops and the switch options;
    reproduce.sh replays the whole run up to it)."""
    out = switch_rows(result.records, result.stops, result.failure, plan)
    if result.failure is not None and out and out[-1]["hop"] == result.failure.hop:
        stop = result.stops.get(result.failure.hop)
        point = stop.point if stop is not None else plan.for_hop(result.failure.hop)
        out[-1]["replay"] = shlex.join(base + ["--hops", "1"] + point.options())
    return out
