"""`pci-harness` verbs: thin faces over the factory and the scenarios.

Every verb takes the shared options (--qemu-binary, --accel,
--timeout-multiplier, --keep-artifacts, --no-snapshot, --json).  Errors are
one paragraph on stderr with no traceback: status 2 when the run could not be
made (bad input, no QEMU, unusable KVM, a guest that never booted, QEMU dying),
status 1 when a verdict failed.  With --json the last thing on stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.factory import GuestFactory, RunSettings
from harness.options import add_shared_options
from harness.qemu.process import kill_all_live


def add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    add_shared_options(group.add_argument)
    group.add_argument("--json", action="store_true",
                       help="print one JSON object as the last thing on stdout")


def settings_from(args: argparse.Namespace) -> RunSettings:
    if args.timeout_multiplier <= 0:
        raise HarnessError("--timeout-multiplier must be positive")
    return RunSettings(qemu_binary=args.qemu_binary, accel=args.accel,
                       timeout_multiplier=args.timeout_multiplier,
                       keep_artifacts=args.keep_artifacts, snapshot=not args.no_snapshot)


def _progress(message: str) -> None:
    print(f"pci-harness: {message}", file=sys.stderr, flush=True)


class ArtifactDir:
    """A run's artifact directory: removed on success unless --keep-artifacts."""

    def __init__(self, verb: str, keep: bool):
        base = os.environ.get("PCI_HARNESS_ARTIFACTS")
        parent = Path(base) if base else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"pci-harness-{verb}-", dir=parent))
        self.keep = keep

    def finish(self, ok: bool) -> None:
        if ok and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            _progress(f"artifacts kept in {self.path}")


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.topology import default_topology

    settings = settings_from(args)
    topology = default_topology(args.machine)  # bad input fails before any QEMU work
    factory = GuestFactory(settings, progress=_progress)
    artifacts = ArtifactDir("boot", settings.keep_artifacts)
    ok = False
    try:
        _progress(f"booting a {args.machine} guest ({factory.accel.name})")
        with factory.guest(topology, artifacts.path) as guest:
            t = guest.timings
            _progress(f"guest ready: SSH after {t.ssh_connected:.2f} s")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pci-harness",
                                     description="QEMU PCI integration-test harness")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    boot = verbs.add_parser("boot", help="boot the default guest, run uname/lspci, shut down")
    boot.add_argument("--machine", required=True, help="pc, q35 or a versioned machine type")
    add_common_options(boot)
    boot.set_defaults(func=cmd_boot)

    for module in VERB_MODULES:
        importlib.import_module(module).register(verbs)
    return parser


#: Modules that add verbs: each has `register(subparsers)` and uses
#: `add_common_options`/`settings_from`/`ArtifactDir` from here.
VERB_MODULES: list[str] = [
    "harness.cli_topology",
    "harness.cli_migration",
    "harness.cli_hotplug",
    "harness.nightly",
    "harness.cli_intx",
]


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
