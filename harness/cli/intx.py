"""`pci-harness intx-stress`: K devices with MSI-X off on one shared INT#x line,
D bridges deep, under verified disk and network load for T seconds.

The verdict (`ok`, `failures`) covers routing (guest IRQ and QEMU's IO-APIC pin
against the swizzle model), every device's line counting interrupts, verified
I/O, and kernel complaints (nobody cared, Disabling IRQ).  Figures: interrupts
per second of the shared line (every device on it reports the line's rate) and
kernel-counted I/O per second per device.
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.errors import UserError


def cmd_intx_stress(args: argparse.Namespace) -> int:
    from harness.scenarios.intx.stress import run_stress, shared_line_layout
    from harness.workloads.payload import PayloadServer

    if args.devices < 1 or args.seconds < 1:
        raise UserError("--devices and --seconds must be at least 1")
    layout = shared_line_layout(args.machine, [args.depth] * args.devices)

    def body(run: VerbRun) -> Result:
        progress(f"{args.machine}: {args.devices} device(s) {args.depth} bridge(s) deep on "
                 f"one INT#x line, {args.seconds} s of load")
        with PayloadServer() as server, run.factory.guest(
                layout.topology, run.artifacts, netdevs=layout.netdevs) as guest:
            report: Result = run_stress(guest, layout, server, args.seconds)
        report["depth"] = args.depth
        return report

    def show(report: Result) -> None:
        print(f"intx-stress {args.machine} depth {args.depth}: "
              f"{'ok' if report['ok'] else 'FAILED'}, {report['link']}, {report['seconds']} s, "
              f"{report['interrupts_per_s']} interrupts/s, {report['io_per_s']} I/O/s")
        for dev in report["devices"]:
            print(f"  {dev['device']:8} {dev['path']:20} IRQ {dev['irq']:3} "
                  f"{dev['interrupts_per_s']:8} irq/s (shared line) {dev['io_per_s']:8} I/O/s "
                  f"{dev['mib_per_s']} MiB/s verified")
        for failure in report["failures"]:
            print(f"  FAILURE: {failure}")

    return run_verb(args, "intx-stress", body, show)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "intx-stress", help="INT#x sharing stress: devices with MSI-X off on one line")
    parser.add_argument("--machine", required=True, help="pc, q35 or a versioned machine type")
    parser.add_argument("--devices", type=int, default=3, metavar="K",
                        help="stress devices (virtio-blk and virtio-net alternately)")
    parser.add_argument("--depth", type=int, default=0, metavar="D",
                        help="pci-bridges between the root bus and the devices")
    parser.add_argument("--seconds", type=int, default=10, metavar="T", help="load duration")
    add_common_options(parser)
    parser.set_defaults(func=cmd_intx_stress)
