"""The nightly's short boot-stress: a few cold boots from AHCI per QEMU, firmware and machine.

Each run is `pci-harness boot-stress --machine M --firmware F --boots N --json`
(F: each `--firmware` given, default the QEMU's own SeaBIOS), started
like the crash hunts (harness/report/hunt.py: a subprocess whose last stdout
line is its verdict, killed when it overruns its budget) and reported in its
own section (harness/report/bootstress.py).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from harness.qemu.binary import QemuBinary
from harness.qemu.firmware import parse_specs, resolve_firmware
from harness.report import hunt
from harness.report.bootstress import boot_stress_figures
from harness.report.document import HuntResult

#: Wall-clock budget per boot (a cold TCG boot to SSH takes 6-7 s idle), before slack.
BOOT_BUDGET_S = 30.0
#: What a boot that hits SeaBIOS's AHCI request timeout waits on top (known gap
#: ahci-tfes-only-seabios-stall): the run must reach its verdict, not be killed.
STALL_S = 35.0


def _say(message: str) -> None:
    print(f"pci-harness nightly: {message}", file=sys.stderr, flush=True)


def suite_firmware(args: argparse.Namespace) -> str:
    """The --firmware the pytest suite runs with: the first one given."""
    return parse_specs(getattr(args, "firmware", None))[0]


def suite_firmware_label(args: argparse.Namespace, binary: QemuBinary) -> str:
    """What the suite's firmware is on BINARY: "SeaBIOS 1.16.2-debian-1.16.2-1"."""
    return resolve_firmware(suite_firmware(args), binary.path, binary.given).label()


def check_firmware(args: argparse.Namespace, binaries: list[QemuBinary]) -> list[QemuBinary]:
    """BINARIES, once every --firmware resolves for every one (else a UserError naming it)."""
    for spec in parse_specs(getattr(args, "firmware", None)):
        for binary in binaries:
            resolve_firmware(spec, binary.path, binary.given)
    return binaries


def firmware_tags(binary: QemuBinary, specs: Sequence[str]) -> list[str]:
    """A short name per --firmware for run labels and file names ("" for the default
    alone, so the labels and history figures of a one-firmware night stay as they were)."""
    if list(specs) == ["seabios"]:
        return [""]
    tags = []
    for spec in specs:
        firmware = resolve_firmware(spec, binary.path, binary.given)
        tags.append(re.sub(r"[^A-Za-z0-9_.+~-]+", "-", firmware.label()))
    return tags


def boot_stress_cells(args: argparse.Namespace, binaries: Sequence[QemuBinary],
                      labels: Sequence[str], machines: Sequence[str],
                      output: Path) -> list[Callable[[], HuntResult]]:
    """One run per QEMU, firmware and machine, each to be called once (the suites'
    threads take them as they finish: nightly_suite.run_suites); none with
    --boot-stress-boots 0."""
    if args.boot_stress_boots <= 0:
        return []
    specs = parse_specs(getattr(args, "firmware", None))
    return [functools.partial(_run, args, binary, label, machine, spec, tag, output)
            for binary, label in zip(binaries, labels, strict=True)
            for spec, tag in zip(specs, firmware_tags(binary, specs), strict=True)
            for machine in machines]


def _run(args: argparse.Namespace, binary: QemuBinary, label: str, machine: str,
         firmware: str, tag: str, output: Path) -> HuntResult:
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    run_dir.mkdir(parents=True, exist_ok=True)
    boots = args.boot_stress_boots
    command = [sys.executable, "-m", "harness", "boot-stress", "--machine", machine,
               "--boots", str(boots), "--json", f"--qemu-binary={binary.path}",
               f"--firmware={firmware}",
               # Every boot counts in the cell, also after a stopped one.
               "--keep-going",
               f"--accel={args.accel}", f"--timeout-multiplier={args.timeout_multiplier}"]
    if args.keep_artifacts:
        command.append("--keep-artifacts")
    with_firmware = f" with {tag}" if tag else ""
    _say(f"boot-stress on QEMU {label}{with_firmware}: {boots} cold boots of {machine} "
         "from AHCI")
    name = f"boot-stress-{machine}" + (f"-{tag}" if tag else "")
    # A firmware stall (a known gap) costs its 32 s timeout per boot on top.
    return hunt.run_hunt(f"{label} {machine}" + (f" {tag}" if tag else ""), command,
                         boots * (BOOT_BUDGET_S + STALL_S), run_dir / f"{name}.log",
                         run_dir / f"{name}-artifacts", args.timeout_multiplier)


def boot_stress_run_figures(runs: Sequence[HuntResult],
                            scopes: Mapping[str, str]) -> dict[str, float]:
    """History figures of the runs that passed (label = "<qemu> <machine>[ <firmware>]"),
    keyed by `scopes[qemu label]` (report/figures.py figure_scope)."""
    figures: dict[str, float] = {}
    for run in runs:
        if run.ok:
            parts = run.run.split()
            figures |= boot_stress_figures(scopes.get(parts[0], parts[0]), run.result,
                                           parts[2] if len(parts) > 2 else "")
    return figures
