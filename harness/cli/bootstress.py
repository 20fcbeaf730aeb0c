"""`pci-harness boot-stress`: cold-boot from AHCI until the count, a failure or a time limit.

Without --disk it boots the AHCI-root guest (guest-images/debian12-ahci) and
checks every phase: firmware found the disk, boot loader, kernel, e2fsck of
the root, root mounted read-write, init and sshd, SSH answering with a
writable /.  With --disk IMAGE --ready REGEX it boots the user's image instead
and a boot passes when the serial console matches REGEX in time.

Exit status 0 when every boot completed, 1 when a boot stopped (the phase, the
reason, the console tail and the boot's artifact directory with reproduce.sh
are printed), 2 when the run could not be made, 130 when interrupted before
any boot failed (the summary is printed all the same).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.errors import UserError
from harness.guest.diskimage import DEFAULT_FLAVOUR, ensure_disk_image
from harness.plan import plan_firmware
from harness.scenarios.bootstress.phases import (
    BootRecord,
    ahci_root_phases,
    summary,
    user_disk_phases,
)
from harness.scenarios.bootstress.run import (
    BootStress,
    BootStressOptions,
    BootStressRun,
    boot_topology,
    image_format,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "20m" or "2h"."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 20m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of boots")
    return value


def register(verbs: Any) -> None:
    parser = verbs.add_parser(
        "boot-stress", help="cold-boot from AHCI again and again, every phase timed and checked",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", required=True, help="pc, q35 or a versioned machine type")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--boots", type=_positive_int, default=None, metavar="N",
                       help="boot N times (default 10)")
    count.add_argument("--until-fail", action="store_true",
                       help="boot until a boot fails (or --max-time, or Ctrl-C)")
    parser.add_argument("--max-time", type=parse_duration, default=None, metavar="T",
                        help="with --until-fail: stop after T (90s, 20m, 2h)")
    parser.add_argument("--keep-going", action="store_true",
                        help="go on after a failed boot (each keeps its artifacts)")
    parser.add_argument("--behind-bridge", action="store_true",
                        help="put the AHCI controller behind a pci-bridge (pc) or a "
                             "pcie-root-port (q35)")
    parser.add_argument("--disk", type=Path, default=None, metavar="IMAGE",
                        help="boot this disk image instead of the AHCI-root guest (never "
                             "written: each boot gets an overlay); needs --ready")
    parser.add_argument("--ready", default=None, metavar="REGEX",
                        help="with --disk: a boot passes when the serial console matches REGEX")
    parser.add_argument("--ready-timeout", type=parse_duration, default=300.0, metavar="T",
                        help="with --disk: how long a boot may take to match --ready "
                             "(default 300s, scaled by --timeout-multiplier)")
    parser.add_argument("--ssh-command", action="append", default=[], metavar="CMD",
                        help="a guest command the ssh phase runs after its own checks "
                             "(repeatable; the kernel log is scanned after it)")
    add_common_options(parser)
    parser.set_defaults(func=cmd_boot_stress)


def _check_args(args: argparse.Namespace) -> None:
    if (args.disk is None) != (args.ready is None):
        raise UserError("--disk and --ready go together",
                        fix="pass both --disk IMAGE and --ready REGEX (what the serial console "
                            "prints once the guest is up), or neither for the AHCI-root guest")
    if args.ready is not None:
        try:
            re.compile(args.ready)
        except re.error as exc:
            raise UserError(f"--ready {args.ready!r} is not a regular expression: {exc}",
                            fix="quote the pattern for the shell and check its syntax") from None
    if args.ssh_command and args.disk is not None:
        raise UserError("--ssh-command runs in the AHCI-root guest's ssh phase; a --disk "
                        "boot ends when its console matches --ready",
                        fix="drop --ssh-command, or boot the AHCI-root guest (no --disk)")
    if args.max_time is not None and not args.until_fail:
        raise UserError("--max-time limits --until-fail runs",
                        fix="use --until-fail --max-time T, or --boots N")


def cmd_boot_stress(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.disk is not None:
        disk: Path | None = args.disk.resolve()
        fmt = image_format(args.disk.resolve())
    else:
        disk, fmt = None, "raw"
    # Bad machine names fail here, before any image or QEMU work.
    boot_topology(args.machine, disk or Path("/dev/null"), fmt, args.behind_bridge)
    finished: list[BootStressRun] = []

    def body(verb: VerbRun) -> Result:
        factory = verb.factory
        built = None if disk else ensure_disk_image(
            DEFAULT_FLAVOUR, progress=lambda m: progress(f"image: {m}"))
        image = disk or built.disk  # type: ignore[union-attr]
        topology = boot_topology(args.machine, image, fmt, args.behind_bridge)
        plan = factory.plan(topology, firmware_log=True)
        firmware = plan_firmware(plan)
        if built is not None and firmware.uefi and not built.uefi_loader:
            raise UserError(f"the AHCI-root disk {image} has no UEFI boot loader",
                            fix="rebuild it (remove its directory under the image cache) "
                                "with a recipe that sets uefi_loader = true")
        phases = (user_disk_phases(args.ready, args.ready_timeout, firmware.uefi)
                  if args.disk else ahci_root_phases(firmware.uefi))
        options = BootStressOptions(
            phases=phases, boots=None if args.until_fail else (args.boots or 10),
            max_time_s=args.max_time, keep_going=args.keep_going,
            keep_artifacts=verb.settings.keep_artifacts, ssh_commands=tuple(args.ssh_command))
        where = " behind a bridge" if args.behind_bridge else ""
        what = f"{image}" if args.disk else f"the AHCI-root guest ({image.name})"
        limit = ("until a boot fails" + (f" or {args.max_time:.0f} s" if args.max_time else "")
                 if args.until_fail else f"{options.boots} times")
        progress(f"cold-booting {what} from AHCI{where} on {args.machine}, {limit} "
                 f"({factory.accel.name}, QEMU {factory.binary.version}, {firmware.label()})")
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        try:
            run = BootStress(plan, verb.artifacts, options, progress).run()
        finally:
            signal.signal(signal.SIGTERM, previous)
        finished.append(run)
        result = summary(run.records, phases, {
            "machine": args.machine, "behind_bridge": args.behind_bridge,
            "disk": str(image), "disk_kind": "user" if args.disk else DEFAULT_FLAVOUR,
            "ready": args.ready, "qemu_binary": str(factory.binary.path),
            "qemu_version": factory.binary.version, "accel": factory.accel.name,
            "firmware": firmware.as_dict(), "firmware_label": firmware.label(),
            "known_gaps": sorted({r.known_gap for r in run.records if r.known_gap}),
            "unexplained_failures": sum(1 for r in run.records
                                        if not r.ok and not r.known_gap),
            "stopped_by": run.stopped_by, "elapsed_s": round(run.elapsed_s, 1)})
        (verb.artifacts / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.json:
            _report_failures(run.records, sys.stderr)  # stdout ends with the JSON object alone
        return result

    # A run fails when a boot failed; one interrupted before any boot completed
    # is not "ok" (no figures) but not a failure either.
    status = run_verb(args, "boot-stress", body,
                      lambda result: _report(result, finished[0].records),
                      passed=lambda result: not result["failures"])
    if status == 0 and finished and finished[0].stopped_by == "interrupted":
        return 130
    return status


def _sigterm_as_interrupt(signum: int, _frame: object) -> None:
    # A CI timeout's SIGTERM ends the run like Ctrl-C: the boot in flight is
    # shut down and the summary is printed.
    raise KeyboardInterrupt


def _report(result: dict[str, Any], records: list[BootRecord]) -> None:
    print(f"boot-stress {result['machine']}{' behind a bridge' if result['behind_bridge'] else ''}"
          f" on QEMU {result['qemu_version']} with {result['firmware_label']} "
          f"({result['accel']}): {result['boots']} of "
          f"{result['attempted']} boots completed, stopped by {result['stopped_by']}")
    for name, figures in result["phases"].items():
        if figures["p50"] is not None:
            print(f"  {name:<11} p50 {figures['p50']:6.2f} s   p95 {figures['p95']:6.2f} s")
    total = result["total_s"]
    if total["p50"] is not None:
        print(f"  {'total':<11} p50 {total['p50']:6.2f} s   p95 {total['p95']:6.2f} s")
    _report_failures(records, sys.stdout)


def _report_failures(records: list[BootRecord], out: TextIO) -> None:
    for record in records:
        if not record.ok:
            print(f"FAILED: {record.describe_failure()}", file=out)
            print(f"  reproduce: {record.artifacts}/reproduce.sh", file=out)
            if record.firmware_tail:
                print("  --- firmware log (tail) ---", file=out)
                print("  " + record.firmware_tail.replace("\n", "\n  "), file=out)
            print("  --- console (tail) ---", file=out)
            print("  " + (record.console_tail or "").replace("\n", "\n  "), file=out)
