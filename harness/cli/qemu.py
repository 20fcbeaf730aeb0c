"""`pci-harness qemu-get SUITE`: print the path of a QEMU from another suite.

    bin/pci-harness nightly --qemu /usr/bin/qemu-system-x86_64 \\
        --qemu "$(bin/pci-harness qemu-get bookworm-backports)"

stdout holds only the path (or, with --json, one object {"path", "version",
"suite", "package_version", "ok", "failures"}); progress goes to stderr.  Exit 2 for a suite
that does not exist, has no QEMU for this architecture or needs a newer C
library than this host has.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from harness.cli.runner import emit, progress


def cmd_qemu_get(args: argparse.Namespace) -> int:
    from harness.qemu.get import Fetcher

    fetcher = Fetcher(args.suite, progress)
    fetched = fetcher.get(refresh=args.refresh)
    progress(f"QEMU {fetched.version} ({fetched.package_version}) from {fetched.suite}")
    emit({**asdict(fetched), "ok": True}, args.json, lambda result: print(result["path"]))
    return 0


def cmd_firmware_get(args: argparse.Namespace) -> int:
    from harness.qemu.firmware_get import FirmwareFetcher

    fetched = FirmwareFetcher(args.suite, args.package, progress).get(refresh=args.refresh)
    progress(f"{args.package} {fetched.version} ({fetched.package_version}) from {fetched.suite}")
    emit({**asdict(fetched), "package": args.package, "ok": True}, args.json,
         lambda result: print(result["path"]))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "qemu-get", help="fetch QEMU from another Debian suite into the cache; print its path",
        description="Fetch qemu-system-x86 with its firmware and module packages from another "
                    "suite of the Debian archive this machine uses (apt-get download with a "
                    "private apt state), unpack it into the cache, check it starts, and print "
                    "the path to hand to --qemu or --qemu-binary.  A second call prints the "
                    "cached path without network.")
    p.add_argument("suite", metavar="SUITE", help="a suite of the Debian archive, such as "
                   "bookworm-backports (QEMU 10.0 on Debian 12)")
    p.add_argument("--refresh", action="store_true",
                   help="read the suite's package list again and fetch a newer build if any")
    p.add_argument("--json", action="store_true",
                   help='print {"path", "version", "suite", "package_version", "ok", '
                        '"failures"} as the last thing on stdout')
    p.set_defaults(func=cmd_qemu_get)
    f = subparsers.add_parser(
        "firmware-get", help="fetch seabios or ovmf from another Debian suite; print the "
                             "--firmware value",
        description="Fetch the seabios or ovmf package from another suite of the Debian "
                    "archive this machine uses (as qemu-get does: apt-get download with a "
                    "private apt state), unpack it into the cache and print what to hand to "
                    "--firmware: the BIOS image's path, or ovmf:CODE,VARS.  A second call "
                    "prints it from the cache without network.")
    f.add_argument("suite", metavar="SUITE", help="a suite of the Debian archive, such as "
                   "bookworm-backports (SeaBIOS 1.16.3 on Debian 12)")
    f.add_argument("package", choices=("seabios", "ovmf"), help="the firmware package")
    f.add_argument("--refresh", action="store_true",
                   help="read the suite's package list again and fetch a newer build if any")
    f.add_argument("--json", action="store_true",
                   help='print {"path", "version", "suite", "package_version", "package", '
                        '"ok", "failures"} as the last thing on stdout')
    f.set_defaults(func=cmd_firmware_get)
