"""What every verb module shares: the common options, RunSettings from them,
progress on stderr and the run's artifact directory.

Verb modules import from here, never from harness.cli or harness.cli.app, so
the package has no import loop: app imports the verbs, the verbs import this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.errors import HarnessError
from harness.factory import RunSettings
from harness.options import add_shared_options


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


def progress(message: str) -> None:
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
            progress(f"artifacts kept in {self.path}")
