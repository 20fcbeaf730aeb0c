"""The nightly's short boot-stress: a few cold boots from AHCI per QEMU and machine.

Each run is `pci-harness boot-stress --machine M --boots N --json`, started
like the crash hunts (harness/report/hunt.py: a subprocess whose last stdout
line is its verdict, killed when it overruns its budget) and reported in its
own section (harness/report/bootstress.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.nightly_stop import stopped
from harness.qemu.binary import QemuBinary
from harness.report import hunt
from harness.report.bootstress import boot_stress_figures
from harness.report.document import HuntResult

#: Wall-clock budget per boot (a cold TCG boot to SSH takes 6-7 s idle), before slack.
BOOT_BUDGET_S = 30.0


def _say(message: str) -> None:
    print(f"pci-harness nightly: {message}", file=sys.stderr, flush=True)


def boot_stress_runs(args: argparse.Namespace, binaries: Sequence[QemuBinary],
                     labels: Sequence[str], machines: Sequence[str],
                     output: Path) -> list[HuntResult]:
    """One run per QEMU and machine; none with --boot-stress-boots 0."""
    if args.boot_stress_boots <= 0:
        return []
    return [_run(args, binary, label, machine, output)
            for binary, label in zip(binaries, labels, strict=True) for machine in machines
            if not stopped()]


def _run(args: argparse.Namespace, binary: QemuBinary, label: str, machine: str,
         output: Path) -> HuntResult:
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    run_dir.mkdir(parents=True, exist_ok=True)
    boots = args.boot_stress_boots
    command = [sys.executable, "-m", "harness", "boot-stress", "--machine", machine,
               "--boots", str(boots), "--json", f"--qemu-binary={binary.path}",
               f"--accel={args.accel}", f"--timeout-multiplier={args.timeout_multiplier}"]
    if args.keep_artifacts:
        command.append("--keep-artifacts")
    _say(f"boot-stress on QEMU {label}: {boots} cold boots of {machine} from AHCI")
    return hunt.run_hunt(f"{label} {machine}", command, boots * BOOT_BUDGET_S,
                         run_dir / f"boot-stress-{machine}.log",
                         run_dir / f"boot-stress-{machine}-artifacts", args.timeout_multiplier)


def boot_stress_run_figures(runs: Sequence[HuntResult],
                            scopes: Mapping[str, str]) -> dict[str, float]:
    """History figures of the runs that passed (label = "<qemu> <machine>"), keyed by
    `scopes[qemu label]` (report/figures.py figure_scope)."""
    figures: dict[str, float] = {}
    for run in runs:
        if run.ok:
            label = run.run.split()[0]
            figures |= boot_stress_figures(scopes.get(label, label), run.result)
    return figures
