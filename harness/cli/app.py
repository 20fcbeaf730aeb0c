"""The `pci-harness` parser and main(): every verb module registers itself here.

Every verb takes the shared options (--qemu-binary, --accel,
--timeout-multiplier, --keep-artifacts, --no-snapshot, --json).  Errors are
one paragraph on stderr with no traceback: status 2 when the run could not be
made (bad input, no QEMU, unusable KVM, a guest that never booted, QEMU dying),
status 1 when a verdict failed.  With --json the last thing on stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, Protocol

from harness.cli import boot, bootstress, explore, hotplug, intx, nightly, pingpong, qemu, topology
from harness.errors import HarnessError
from harness.qemu.process import kill_all_live


class VerbModule(Protocol):
    def register(self, subparsers: Any) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pci-harness",
                                     description="QEMU PCI integration-test harness")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for module in VERB_MODULES:
        module.register(verbs)
    return parser


#: Modules that add verbs, in `--help` order: each has `register(subparsers)`
#: and takes its shared helpers from harness.cli.common.
VERB_MODULES: tuple[VerbModule, ...] = (boot, topology, explore, pingpong, hotplug, nightly, intx,
                                         bootstress, qemu)


def _on_signal(signum: int, _frame: object) -> None:
    kill_all_live()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP: kill our QEMUs before dying (PDEATHSIG covers SIGKILL).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = time.monotonic()
    try:
        status = int(args.func(args))
    except HarnessError as exc:
        print(f"pci-harness {args.verb}: {exc.describe()}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": exc.message, "fix": exc.fix,
                              "failures": [exc.message]}))
        status = 2
    except KeyboardInterrupt:
        print(f"pci-harness {args.verb}: interrupted", file=sys.stderr)
        status = 130
    finally:
        kill_all_live()
    if not getattr(args, "json", False):
        print(f"pci-harness {args.verb}: done in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
