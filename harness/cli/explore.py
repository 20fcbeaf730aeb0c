"""`pci-harness explore`: machines nobody wrote, three views on each.

explore                 draw machines (--seed), boot each, compare the views;
                        --examples N / --minutes M bound the run; every failure
                        is shrunk and saved (--save DIR, default the run's
                        artifacts) as a topology TOML with the difference, the
                        QEMU, the seed and the replay command.  Exit 1 when a
                        failure was found.
explore --replay FILE   boot a saved case again: exit 1 while it still fails
                        the same way (red), 0 when the views agree (green).
explore --adopt FILE    copy a saved case into the regression cases
                        (tests/pci/explored/ by default) with --expect
                        passes|fails for this QEMU's release series; the
                        parametrized test tests/pci/test_explored.py runs it.
"""

from __future__ import annotations

import argparse
import random
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, emit, progress, run_verb
from harness.errors import UserError
from harness.factory import GuestFactory
from harness.qemu.binary import find_qemu
from harness.qemu.probe import probed_facts
from harness.scenarios.explore.case import EXPECTED, adopt, load_case
from harness.scenarios.explore.check import MachineCheck, same_failure
from harness.scenarios.explore.draws import Space
from harness.scenarios.explore.run import Budget, Explorer, describe, probe_driver_for
from harness.scenarios.explore.strategies import MAX_DEVICES, drawable_drivers

DEFAULT_CASES = Path("tests/pci/explored")


def _command(args: argparse.Namespace, binary: str) -> str:
    parts = ["pci-harness", "explore", "--replay", "{file}", "--qemu-binary", binary,
             "--timeout-multiplier", str(args.timeout_multiplier or 1)]
    return " ".join(shlex.quote(p) if p != "{file}" else p for p in parts)


def _factory(run: VerbRun) -> GuestFactory:
    # A snapshot per drawn machine would be written once and never read again
    # (every machine is new); --replay boots one machine, the cache may help.
    return GuestFactory(replace(run.settings, snapshot=False), progress=run.progress)


def cmd_explore(args: argparse.Namespace) -> int:
    if args.adopt:
        return _cmd_adopt(args)
    if args.replay:
        return _cmd_replay(args)
    if args.examples is None and args.minutes is None:
        args.examples = 20
    if (args.examples is not None and args.examples < 1) or (
            args.minutes is not None and args.minutes <= 0):
        raise UserError("--examples and --minutes must be positive",
                        fix="give e.g. --examples 20 or --minutes 5")
    shard = _shard(args.shard)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    progress(f"explore: seed {seed} (--seed {seed} draws the same machines again)")

    def body(run: VerbRun) -> Result:
        factory = _factory(run)
        binary = str(factory.binary.given or factory.binary.path)
        from harness.qemu.devprops import device_properties
        from harness.qemu.drivers import DRIVERS

        props = device_properties(factory.binary, DRIVERS)
        space = Space.of(props, probed_facts(factory.binary).port_link_speeds,
                         args.max_devices)
        dst = find_qemu(args.dst_qemu) if args.dst_qemu else None
        check = MachineCheck(factory, run.artifacts, say=run.progress,
                             probe_driver=probe_driver_for(drawable_drivers(props))
                             if not args.no_placement else (lambda t: None),
                             hotplug=args.hotplug, migrate=args.migrate, dst_binary=dst)
        save = Path(args.save) if args.save else run.artifacts / "found"
        explorer = Explorer(check, seed=seed, space=space,
                            budget=Budget(args.examples, args.minutes, args.shrink_minutes),
                            qemu_version=factory.binary.version, qemu_binary=binary,
                            save_dir=save, replay_command=_command(args, binary),
                            use_database=not args.no_database, say=run.progress,
                            shard=shard,
                            meta={"hotplug": args.hotplug or None,
                                  "migrate": args.migrate or None,
                                  "dst_qemu": str(dst.path) if dst else None})
        report = explorer.run().to_dict()
        return {**report, "seed": seed, "qemu_version": factory.binary.version,
                "accel": factory.accel.name}

    return run_verb(args, "explore", body, _print_report)


def _shard(text: str | None) -> tuple[int, int]:
    """"K/N" -> (K, N): this process takes example indexes K, K+N, K+2N, ..."""
    if text is None:
        return (0, 1)
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise UserError(f"--shard {text!r} is not K/N with 0 <= K < N",
                        fix="give e.g. --shard 0/2 and --shard 1/2 to two processes")
    return (k, n)


def _print_report(result: Result) -> None:
    t = result["per_topology_s"]
    print(f"explored {result['examples']} machine(s), {result['distinct_topologies']} distinct, "
          f"seed {result['seed']}, QEMU {result['qemu_version']} ({result['accel']}): "
          f"p50 {t['p50']} s, p95 {t['p95']} s per machine, {result['elapsed_s']} s in all")
    if not result["failures"]:
        print("no failure: model, QEMU and guest agreed on every machine")
    for f in result["failures"]:
        print(f"FAILURE ({f['kind']}, {f['devices']} device(s), shrunk from "
              f"{f['original_devices']} in {f['shrink_s']} s): {f['difference']}")
        print(f"  saved: {f['saved']}\n  replay: {f['replay']}")


def _cmd_replay(args: argparse.Namespace) -> int:
    case = load_case(Path(args.replay))

    def body(run: VerbRun) -> Result:
        meta = case.meta
        dst = find_qemu(args.dst_qemu or meta["dst_qemu"]) if (
            args.dst_qemu or meta.get("dst_qemu")) else None
        check = MachineCheck(run.factory, run.artifacts, say=run.progress,
                             hotplug=bool(args.hotplug or meta.get("hotplug")),
                             migrate=bool(args.migrate or meta.get("migrate")), dst_binary=dst)
        outcome = check(case.topology)
        same = same_failure(case.signature, outcome) if case.signature else outcome.failed
        run.progress(f"replay: {describe(case.topology)}: {outcome.summary()}")
        return {"ok": not outcome.failed, "case": args.replay, "kind": outcome.kind,
                "same_failure": same, "qemu_version": run.factory.binary.version,
                "problems": list(outcome.problems), "seconds": round(outcome.seconds, 1),
                "failures": [str(p.get("text")) for p in outcome.problems]
                or ([outcome.message] if outcome.failed else [])}

    def show(result: Result) -> None:
        verdict = ("green: model, QEMU and guest agree" if result["ok"] else
                   "red: fails " + ("the same way" if result["same_failure"] else "differently"))
        print(f"{result['case']} on QEMU {result['qemu_version']}: {verdict}")
        for failure in result["failures"]:
            print(f"  {failure}")

    return run_verb(args, "explore", body, show)


def _cmd_adopt(args: argparse.Namespace) -> int:
    if args.expect is None:
        raise UserError("--adopt needs --expect passes|fails (the outcome on this QEMU)",
                        fix="add --expect fails for a known gap, --expect passes once fixed")
    binary = find_qemu(args.qemu_binary)
    out = adopt(Path(args.adopt), Path(args.into), binary.version, args.expect)
    result: dict[str, Any] = {"ok": True, "adopted": str(out), "qemu_version": binary.version,
                              "expect": args.expect, "failures": []}
    emit(result, args.json, lambda r: print(f"adopted {r['adopted']}: expected to "
                                            f"{r['expect'][:4]} on QEMU "
                                            f"{r['qemu_version']} and its release series"))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "explore", help="boot drawn machines and compare the three views on each",
        description="Draw machines from the driver table and placement rules (Hypothesis), "
                    "boot each, compare model, QEMU and guest; shrink and save every "
                    "failure. Exit 0 when all agreed, 1 when a failure was found, 2 for "
                    "bad input.")
    p.add_argument("--examples", type=int, help="machines to boot (default 20 without "
                   "--minutes)")
    p.add_argument("--minutes", type=float, help="time budget for drawing and booting")
    p.add_argument("--seed", type=int, help="the same seed draws the same machines "
                   "(default: random, printed)")
    p.add_argument("--shard", metavar="K/N", help="take only example indexes K, K+N, ... "
                   "(N processes with one seed draw disjoint machines)")
    p.add_argument("--save", metavar="DIR", help="where found cases go (default: the run's "
                   "artifacts/found)")
    p.add_argument("--replay", metavar="FILE", help="boot a saved case again")
    p.add_argument("--adopt", metavar="FILE", help="turn a saved case into a regression case")
    p.add_argument("--expect", choices=EXPECTED, help="with --adopt: the outcome on this QEMU")
    p.add_argument("--into", default=str(DEFAULT_CASES), metavar="DIR",
                   help=f"with --adopt: the regression cases (default {DEFAULT_CASES})")
    p.add_argument("--max-devices", type=int, default=MAX_DEVICES,
                   help=f"devices per machine at most (default {MAX_DEVICES})")
    p.add_argument("--shrink-minutes", type=float, default=5.0,
                   help="time budget for shrinking one failure (default 5)")
    p.add_argument("--no-database", action="store_true",
                   help="neither try nor record failing machines in the example database")
    p.add_argument("--hotplug", action="store_true",
                   help="also plug and unplug a NIC on every hot-pluggable bus of each machine "
                        "(up to 4), views checked after each step")
    p.add_argument("--migrate", action="store_true",
                   help="also migrate each machine once and compare the views after the hop")
    p.add_argument("--dst-qemu", metavar="PATH",
                   help="migrate to this QEMU (implies --migrate; machines use a type both "
                        "build)")
    p.add_argument("--no-placement", action="store_true",
                   help="skip the placement probe (where's answers against the model)")
    add_common_options(p)
    p.set_defaults(func=cmd_explore)
