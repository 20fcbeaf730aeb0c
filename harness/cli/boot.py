"""`pci-harness boot`: boot the default guest, run uname/lspci, shut down."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.topology import default_topology


def register(subparsers: Any) -> None:
    boot = subparsers.add_parser("boot",
                                 help="boot the default guest, run uname/lspci, shut down")
    boot.add_argument("--machine", required=True, help="pc, q35 or a versioned machine type")
    add_common_options(boot)
    boot.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    topology = default_topology(args.machine)  # bad input fails before any QEMU work

    def body(run: VerbRun) -> Result:
        factory = run.factory
        progress(f"booting a {args.machine} guest ({factory.accel.name})")
        with factory.guest(topology, run.artifacts) as guest:
            t = guest.timings
            progress(f"guest ready: SSH after {t.ssh_connected:.2f} s")
            kernel = guest.succeed("uname -r").strip()
            lspci = guest.succeed("lspci -n").strip().splitlines()
        return {
            "ok": True, "machine": args.machine, "accel": factory.accel.name,
            "accel_reason": factory.accel.reason, "qemu_binary": str(factory.binary.path),
            "qemu_version": factory.binary.version, "boot_to_ssh_s": round(t.ssh_connected, 3),
            "timings": {k: (round(v, 3) if isinstance(v, float) else v)
                        for k, v in t.as_dict().items()},
            "kernel": kernel, "lspci": lspci, "failures": [],
        }

    def show(result: Result) -> None:
        print(f"{args.machine} guest on QEMU {result['qemu_version']} with "
              f"{result.get('firmware_label', 'its firmware')} ({result['accel']}): "
              f"SSH after {result['boot_to_ssh_s']:.2f} s, kernel {result['kernel']}")
        for line in result["lspci"]:
            print(f"  {line}")

    return run_verb(args, "boot", body, show)
