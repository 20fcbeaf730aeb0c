"""`pci-harness nightly`: its options.  The run itself (the suite per QEMU
binary, crash hunts, boot-stress, reports) is harness/nightly.py."""

from __future__ import annotations

import argparse
import math
from typing import Any

from harness.cli.common import add_common_options
from harness.nightly import HUNT_KEEP_STATES, HUNT_LOAD, run_nightly
from harness.nightly_suite import DIST_MODES, SELF_TESTS


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the parser already has it (harness.cli defines the first version)."""
    known = {a.dest for a in parser._actions} | set(parser._option_string_actions)
    dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
    if any(f in known for f in flags) or dest in known:
        return
    parser.add_argument(*flags, **kwargs)


#: The nightly's own deadline: here a two-QEMU night takes 11 minutes; a test
#: that hangs past every deadline of its own must not hold the reports back.
DEFAULT_MAX_MINUTES = 180.0

#: An upper bound of drawn machines per minute of budget (about 4 s each on two
#: quiet TCG cores); the tests past the budget skip at once.
EXPLORE_PER_MINUTE = 30


def explore_argv(args: argparse.Namespace) -> list[str]:
    """tests/pci/test_explore.py's options: a budget, and enough examples to fill it."""
    minutes = float(getattr(args, "explore_minutes", 0.0) or 0.0)
    seed = int(getattr(args, "explore_seed", 1))
    if minutes <= 0:  # the smoke handful, on the seed asked for
        return [] if seed == 1 else [f"--explore-seed={seed}"]
    return [f"--explore-seed={seed}", f"--explore-minutes={minutes}",
            f"--explore-examples={max(4, math.ceil(minutes * EXPLORE_PER_MINUTE))}"]


def _run(args: argparse.Namespace) -> int:
    """run_nightly with the exploration's pytest options in front of the user's."""
    args.pytest_args = [*explore_argv(args), *args.pytest_args]
    return run_nightly(args)


def register(subparsers: Any) -> None:
    """The nightly verb's options; `set_defaults` makes harness.nightly run it."""
    parser = subparsers.choices.get("nightly")
    fresh = parser is None
    if fresh:
        parser = subparsers.add_parser("nightly", help="run the whole suite and write reports")
    _add(parser, "--output", metavar="DIR",
         help="report directory (default <report-dir>/<date-time>/)")
    _add(parser, "--report-dir", metavar="DIR", default="reports",
         help="where dated report directories go and earlier runs are found as baselines "
              "(default ./reports)")
    _add(parser, "--suite", metavar="DIR", default=None,
         help="run the tests in DIR instead of the conformance suite the package ships")
    _add(parser, "--qemu", action="append", metavar="PATH", default=[],
         help="run the suite once per QEMU binary (repeatable)")
    _add(parser, "--firmware", action="append", metavar="NAME|FILE|ovmf:FILE", default=[],
         help="firmware for the AHCI boot runs, repeatable like --qemu: each QEMU boots with "
              "each one, a cell per combination (default: the QEMU's own SeaBIOS); the pytest "
              "suite runs with the first")
    _add(parser, "--qemu-runs", choices=("together", "one-by-one"), default="together",
         help="several --qemu: run their suites at the same time, the workers split between "
              "them (default; one after the other with remote --tx hosts), or one by one")
    _add(parser, "--machines", default="pc,q35", help="machine kinds to run (comma-separated)")
    _add(parser, "--jobs", default="auto", help="pytest-xdist -n value: N, logical, or auto = two workers per CPU (default)")
    _add(parser, "--baseline", metavar="DIR",
         help="compare with this earlier run (default: the previous run next to --output)")
    _add(parser, "--until-fail-minutes", type=float, default=0.0, metavar="M",
         help="after the suite, hunt ping-pong migration crashes for M minutes per QEMU")
    _add(parser, "--hunt-load", default=HUNT_LOAD, metavar="LOADS",
         help=f"the crash hunt's pingpong --load (default {HUNT_LOAD}: every memory page "
              "and file checked after every hop)")
    _add(parser, "--hunt-keep-states", type=int, default=HUNT_KEEP_STATES, metavar="K",
         help="the crash hunt keeps the stream and disks of its last K hops, so a failure "
              f"replays from its state (default {HUNT_KEEP_STATES}; 0 off)")
    _add(parser, "--boot-stress-boots", type=int, default=3, metavar="N",
         help="after the suite, cold-boot the AHCI-root guest N times per machine and QEMU "
              "(pci-harness boot-stress), 0 to turn off (default 3)")
    _add(parser, "--cross-version-hops", type=int, default=6, metavar="N",
         help="with two or more --qemu: ping-pong N hops between the first two QEMUs each "
              "way (a guest booted on the first, then one booted on the second), on what "
              "q35 means on the older; 0 to turn off (default 6)")
    _add(parser, "--explore-minutes", type=float, default=0.0, metavar="M",
         help="boot drawn machines (tests/pci/test_explore.py) for M minutes per QEMU, "
              "filling the workers alongside the suite; 0 (default): the smoke handful")
    _add(parser, "--explore-seed", type=int, default=1, metavar="S",
         help="the seed the nightly's machines are drawn from (default 1: the same "
              "machines every night, so a failure is new against the baseline)")
    _add(parser, "--max-minutes", type=float, default=DEFAULT_MAX_MINUTES, metavar="M",
         help="stop the nightly after M minutes as SIGTERM would: what ran is reported, "
              "what did not is listed as not run, and the night fails (default "
              f"{DEFAULT_MAX_MINUTES:g}; 0: no deadline)")
    _add(parser, "--tx", action="append", default=[], metavar="SPEC",
         help="pytest-xdist gateway, repeatable: ssh=HOST//python=PATH/.venv/bin/python"
              "//chdir=PATH (replaces -n unless --jobs is given too)")
    _add(parser, "--dist", choices=DIST_MODES, default=None,
         help="pytest-xdist distribution mode (default: worksteal)")
    _add(parser, "--self-tests", action="store_true",
         help=f"also run the nightly's own tests ({', '.join(SELF_TESTS)})")
    _add(parser, "pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    if fresh:
        add_common_options(parser, skip=("--firmware",))
    parser.set_defaults(func=_run)
