"""`pci-harness boot`: boot the default guest, run uname/lspci, shut down."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness.cli.common import ArtifactDir, add_common_options, progress, settings_from
from harness.factory import GuestFactory
from harness.topology import default_topology


def register(subparsers: Any) -> None:
    boot = subparsers.add_parser("boot",
                                 help="boot the default guest, run uname/lspci, shut down")
    boot.add_argument("--machine", required=True, help="pc, q35 or a versioned machine type")
    add_common_options(boot)
    boot.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    topology = default_topology(args.machine)  # bad input fails before any QEMU work
    factory = GuestFactory(settings, progress=progress)
    artifacts = ArtifactDir("boot", settings.keep_artifacts)
    ok = False
    try:
        progress(f"booting a {args.machine} guest ({factory.accel.name})")
        with factory.guest(topology, artifacts.path) as guest:
            t = guest.timings
            progress(f"guest ready: SSH after {t.ssh_connected:.2f} s")
            kernel = guest.succeed("uname -r").strip()
            lspci = guest.succeed("lspci -n").strip().splitlines()
        ok = True
    finally:
        artifacts.finish(ok)
    result: dict[str, Any] = {
        "ok": True, "machine": args.machine, "accel": factory.accel.name,
        "accel_reason": factory.accel.reason, "qemu_binary": str(factory.binary.path),
        "qemu_version": factory.binary.version, "boot_to_ssh_s": round(t.ssh_connected, 3),
        "timings": {k: (round(v, 3) if isinstance(v, float) else v)
                    for k, v in t.as_dict().items()},
        "kernel": kernel, "lspci": lspci, "failures": [],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.machine} guest on QEMU {factory.binary.version} ({factory.accel.name}): "
              f"SSH after {t.ssh_connected:.2f} s, kernel {kernel}")
        for line in lspci:
            print(f"  {line}")
    return 0
