"""`pci-harness nightly`: the whole suite under pytest-xdist, once per QEMU binary.

Each binary's run writes `junit.xml` into the report directory (one
sub-directory per binary when several are given).  The exit status is
pytest's: known failures (strict xfail) do not fail the run, an unexpected
pass does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from harness.paths import project_root


def _pytest_argv(args: argparse.Namespace, qemu: str | None, outdir: Path) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "-n", str(args.jobs), "-p", "no:cacheprovider",
            "--junitxml", str(outdir / "junit.xml"), "--accel", args.accel,
            "--timeout-multiplier", str(args.timeout_multiplier),
            "--artifacts-dir", str(outdir / "artifacts"), "-rfE"]
    if qemu:
        argv += ["--qemu-binary", qemu]
    if args.keep_artifacts:
        argv.append("--keep-artifacts")
    if args.no_snapshot:
        argv.append("--no-snapshot")
    argv += [str(project_root() / "tests")] + list(args.pytest_args)
    return argv


def run_nightly(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = Path(args.output) if args.output else project_root() / "reports" / stamp
    output.mkdir(parents=True, exist_ok=True)
    binaries: list[str | None] = list(args.qemu) or [args.qemu_binary]
    worst = 0
    for index, qemu in enumerate(binaries):
        outdir = output if len(binaries) == 1 else output / f"qemu-{index}"
        outdir.mkdir(parents=True, exist_ok=True)
        argv = _pytest_argv(args, qemu, outdir)
        print(f"pci-harness nightly: [{index + 1}/{len(binaries)}] {qemu or 'default QEMU'}: "
              f"{' '.join(argv[1:])}", file=sys.stderr, flush=True)
        status = subprocess.call(argv, cwd=project_root())
        if status == 5:
            print("pci-harness nightly: no tests collected: failing", file=sys.stderr)
            status = 1
        worst = max(worst, status)
    print(f"pci-harness nightly: reports in {output}", file=sys.stderr)
    return 1 if worst else 0
