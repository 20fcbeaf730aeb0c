"""The nightly's cross-version ping-pong: two QEMUs migrate a guest both ways.

A guest booted on the first QEMU migrates to the second and back, then one
booted on the second migrates to the first and back, each run its own verdict
(`pci-harness pingpong --dst-qemu`, a subprocess like the crash hunts).  Both
run on the machine type `q35` means on the older QEMU, the one both have.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.errors import UserError
from harness.qemu.binary import QemuBinary
from harness.report import hunt
from harness.report.document import HuntResult


def _say(message: str) -> None:
    print(f"pci-harness nightly: {message}", file=sys.stderr, flush=True)


#: Wall-clock budget per cross-version hop (boot, hop, checks; TCG), before slack.
CROSS_HOP_BUDGET_S = 10.0


def _version_key(binary: QemuBinary) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", binary.version)[:3])


def cross_version_machine(a: QemuBinary, b: QemuBinary) -> str:
    """The machine type both QEMUs migrate on: what `q35` means on the older one
    (each alias names its own binary's newest type, and a stream between
    pc-q35-7.2 and pc-q35-10.0 does not load).  Checked before any test runs."""
    older, newer = sorted((a, b), key=_version_key)
    pinned = older.resolve_machine("q35")
    if pinned not in newer.machines:
        raise UserError(
            f"QEMU {newer.version} ({newer.path}) has no machine type {pinned}, what q35 "
            f"means on QEMU {older.version}, so the two cannot migrate to each other",
            fix="give two QEMUs that share a q35 machine type, or --cross-version-hops 0")
    return pinned


def _cross_version(args: argparse.Namespace, src: QemuBinary, dst: QemuBinary,
                   labels: tuple[str, str], machine: str, output: Path) -> HuntResult:
    """One direction of the cross-version ping-pong: the guest boots on `src`,
    odd hops load it on `dst`, even hops bring it back (the verb's JSON counts
    the hops of each way under `directions`)."""
    hops = args.cross_version_hops
    label = f"{labels[0]} -> {labels[1]} (cross-version, {machine})"
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_",
                                       f"cross-{labels[0]}-to-{labels[1]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "harness", "pingpong", "--machine", machine,
               "--hops", str(hops), "--json", f"--qemu-binary={src.path}",
               f"--dst-qemu={dst.path}", f"--accel={args.accel}",
               f"--timeout-multiplier={args.timeout_multiplier}"]
    if args.keep_artifacts:
        command.append("--keep-artifacts")
    _say(f"cross-version ping-pong, {hops} hops on {machine}: boots on QEMU {labels[0]}, "
         f"odd hops to {labels[1]}")
    return hunt.run_hunt(label, command, hops * CROSS_HOP_BUDGET_S, run_dir / "pingpong.log",
                         run_dir / "pingpong-artifacts", args.timeout_multiplier)


def cross_version_runs(args: argparse.Namespace, binaries: Sequence[QemuBinary],
                       labels: Sequence[str], machine: str,
                       output: Path) -> list[Callable[[], HuntResult]]:
    """old -> new and new -> old (in --qemu order, then reversed), each its own
    verdict: a guest born on either QEMU must survive the move to the other.
    Each is to be called once (the nightly's suite threads take them as they end)."""
    a, b = binaries[0], binaries[1]
    return [functools.partial(_cross_version, args, a, b, (labels[0], labels[1]), machine,
                              output),
            functools.partial(_cross_version, args, b, a, (labels[1], labels[0]), machine,
                              output)]
