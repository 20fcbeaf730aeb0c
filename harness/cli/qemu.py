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
