"""`pci-harness nightly`: the whole suite per QEMU binary, then the reports.

For each QEMU binary (`--qemu`, repeatable; default the one on PATH) the suite
(the conformance suite the package ships, or `--suite DIR`; pytest runs in
that directory, so its configuration and test ids apply) runs once under pytest-xdist (`-n auto`, or the gateways given with `--tx`,
which is how a run spreads over several KVM hosts: no scheduler of our own).
The collector plugin (`-p harness.report.collect`) records every test; this
module merges the runs and writes into the report directory:

    junit.xml  report.json  report.html  summary.md   runs/<qemu>/{pytest.log,
    junit.xml, results.json, artifacts/}

Exit status: 0 when every test passed or is a known failure (strict xfail),
1 on any failure, error, unexpected pass, regression against the baseline,
failed crash hunt or boot-stress run, or an empty selection (pytest's 5), 2 for
bad input.  After the suite, each QEMU cold-boots the AHCI-root guest a few
times per machine (`--boot-stress-boots`, `pci-harness boot-stress`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness import nightly_boot_stress as boot_runs
from harness import nightly_stop as stopping
from harness.cross_version import cross_version_machine, cross_version_runs
from harness.errors import UserError
from harness.lab import check_gateways
from harness.nightly_suite import ONCE_PER_NIGHT, run_suites, suite_dir
from harness.paths import cache_root
from harness.pytestplugin.seed_index import SEED_ITEMS
from harness.qemu.binary import QemuBinary, find_qemu
from harness.report import hunt
from harness.report.baseline import compare, find_previous, load_baseline
from harness.report.document import (
    HuntResult,
    NightlyReport,
    figure_scopes,
    nightly_figures,
)
from harness.report.history import load_history, slowdowns
from harness.report.html import render_html
from harness.report.junit import merge_junit
from harness.report.markdown import render_markdown
from harness.report.matrix import build_items

#: The crash hunt's loads: a lost page or file write is named, not only a dead guest.
HUNT_LOAD = "memory,fs"
HUNT_KEEP_STATES = 2

def _say(message: str) -> None:
    print(f"pci-harness nightly: {message}", file=sys.stderr, flush=True)


# ---- input ----

def _validate(args: argparse.Namespace) -> tuple[list[QemuBinary], list[str]]:
    """Everything that can be wrong with the input, checked before any test runs."""
    from harness.topology.data import machine_kind

    if args.timeout_multiplier <= 0:
        raise UserError("--timeout-multiplier must be positive")
    if args.until_fail_minutes < 0:
        raise UserError("--until-fail-minutes must not be negative")
    if args.cross_version_hops < 0:
        raise UserError("--cross-version-hops must not be negative")
    if args.boot_stress_boots < 0:
        raise UserError("--boot-stress-boots must not be negative",
                        fix="give a number of boots, or 0 to turn boot-stress off")
    cache_root()  # guest images, snapshots, launchers: an unusable cache stops us here
    jobs = str(args.jobs)
    if jobs not in ("auto", "logical") and not (jobs.isdigit()):
        raise UserError(f"--jobs {jobs!r} is not auto, logical or a number")
    machines = [m.strip() for m in str(args.machines).split(",") if m.strip()]
    if not machines:
        raise UserError("--machines is empty", fix="use pc, q35 or pc,q35")
    kinds = [machine_kind(m) for m in machines]
    if kinds != machines:
        raise UserError(f"--machines takes machine kinds (pc, q35), not {args.machines!r}",
                        fix="a versioned machine type is chosen by the tests themselves")
    binaries = [find_qemu(q) for q in (args.qemu or [args.qemu_binary])]
    paths = [b.path for b in binaries]
    if len(set(paths)) != len(paths):
        raise UserError("the same QEMU binary is given twice", fix="give each --qemu once")
    return boot_runs.check_firmware(args, binaries), machines  # a bad --firmware, too


def _labels(binaries: Sequence[QemuBinary]) -> list[str]:
    """The QEMU version, made unique with a counter when two builds share it."""
    versions = [b.version for b in binaries]
    return [v if versions.count(v) == 1 else f"{v}#{i + 1}" for i, v in enumerate(versions)]


def _output_dir(args: argparse.Namespace) -> Path:
    if args.output:
        out = Path(args.output).resolve()
        if (out / "report.json").exists():
            raise UserError(f"{out} already holds a nightly report",
                            fix="choose a new --output directory (old runs are baselines)")
        return out
    base = Path(args.report_dir).absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = base / stamp, 1
    while out.exists():
        n += 1
        out = base / f"{stamp}-{n}"
    return out


def _hunt(args: argparse.Namespace, binary: QemuBinary, label: str, output: Path) -> HuntResult:
    seconds = args.until_fail_minutes * 60
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    command = [sys.executable, "-m", "harness", "pingpong", "--machine", "q35", "--until-fail",
               "--max-time", f"{seconds:g}", "--json", f"--qemu-binary={binary.path}",
               f"--accel={args.accel}", f"--timeout-multiplier={args.timeout_multiplier}",
               f"--load={args.hunt_load}", f"--keep-states={args.hunt_keep_states}"]
    if args.keep_artifacts:
        command.append("--keep-artifacts")
    _say(f"ping-pong crash hunt on QEMU {label} for {seconds:g} s")
    return hunt.run_hunt(label, command, seconds, run_dir / "pingpong.log",
                         run_dir / "pingpong-artifacts", args.timeout_multiplier)


# ---- the whole run ----

def run_nightly(args: argparse.Namespace) -> int:
    binaries, machines = _validate(args)
    suite_dir(args)  # a missing --suite is bad input: say so before anything runs
    cross = len(binaries) >= 2 and args.cross_version_hops > 0
    cross_machine = cross_version_machine(binaries[0], binaries[1]) if cross else ""
    if getattr(args, "tx", None):
        for binary in binaries:  # every host ready for every QEMU, before any test runs
            check_gateways(args.tx, str(binary.path), progress=_say)
    if args.until_fail_minutes > 0:
        hunt.check_available()
    baseline = load_baseline(Path(args.baseline)) if args.baseline else None
    output = _output_dir(args)
    output.mkdir(parents=True, exist_ok=True)
    labels = _labels(binaries)
    started = dt.datetime.now().astimezone()
    clock = time.monotonic()
    runs, tests, problems = [], [], []
    with stopping.stoppable(float(getattr(args, "max_minutes", 0.0) or 0.0)) as stop:
        cells = boot_runs.boot_stress_cells(args, binaries, labels, machines, output)
        crossing = cross_version_runs(args, binaries, labels, cross_machine,
                                      output) if cross else []
        suites, extra = run_suites(args, binaries, labels, output, machines, cells + crossing)
        boot_stress = [r for r in extra[:len(cells)] if r is not None]
        crossed = [r for r in extra[len(cells):] if r is not None]
        for info, results, trouble in suites:
            runs.append(info)
            tests += results
            problems += trouble
        hunts = [_hunt(args, b, l, output) for b, l in zip(binaries, labels)
                 if not stopping.stopped()] if args.until_fail_minutes > 0 else []
        hunts += crossed
    interrupted = stopping.interruption(stop, labels[len(runs):], runs, clock)
    merge_junit([(r.label, output / r.directory / "junit.xml") for r in runs],
                output / "junit.xml")
    items = build_items(tests, SEED_ITEMS, machines, labels)
    note = None
    if baseline is None:
        previous = find_previous(output.parent, output)
        note = None if previous else f"no earlier run in {output.parent} to compare with"
        try:
            baseline = load_baseline(previous) if previous else None
        except UserError as exc:  # found, not asked for: never lose tonight's report to it
            baseline, note = None, f"the previous run could not be read: {exc.message}"
    diff = compare([r.ref() for r in runs], tests, items, baseline, args.pytest_args,
                   ONCE_PER_NIGHT) \
        if baseline else None
    duration = time.monotonic() - clock
    figures = nightly_figures(runs, tests, hunts, duration, socket.gethostname())
    if interrupted:  # a cut-short night's wall times are no reference for later ones
        figures = {k: v for k, v in figures.items() if not k.endswith(" wall_s")}
    figures |= boot_runs.boot_stress_run_figures(boot_stress, figure_scopes(runs, tests,
                                                                  socket.gethostname()))
    history = load_history(output.parent, output)
    report = NightlyReport(
        started=started.isoformat(timespec="seconds"),
        finished=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        duration_s=duration, host=socket.gethostname(),
        command=tuple(["pci-harness", "nightly"] + sys.argv[2:]) if sys.argv[1:2] == ["nightly"]
        else tuple(sys.argv), pytest_args=tuple(args.pytest_args), machines=tuple(machines),
        seeds=SEED_ITEMS, runs=tuple(runs), tests=tuple(tests), items=items, baseline=diff,
        baseline_note=note, hunts=tuple(hunts), boot_stress=tuple(boot_stress),
        problems=tuple(problems), interrupted=interrupted,
        figures=figures, slowdowns=tuple(slowdowns(history, figures)), history=tuple(history))
    status = _finish(report, output, args.json)
    if interrupted:  # a signal's exit status, or the verdict's (FAIL) for the deadline
        if stop.signum is not None:
            status = 128 + stop.signum
        _say(f"{interrupted['words']}: reports for the {len(tests)} test(s) that ran are in "
             f"{output}; exit {status}")
    return status


def _finish(report: NightlyReport, output: Path, as_json: bool) -> int:
    report.write_json(output / "report.json")
    (output / "summary.md").write_text(render_markdown(report))
    (output / "report.html").write_text(render_html(report, output))
    status, reasons = report.verdict()
    if report.baseline is not None:
        d = report.baseline
        _say(f"against {d.baseline}: {len(d.regressions)} regressions, {len(d.fixes)} fixes, "
             f"{len(d.new_known_failures)} new known failures, {len(d.new_failures)} new failures")
        for change in d.regressions:
            _say(f"  REGRESSION {change.nodeid} [{change.run}]: {change.before} -> {change.after}")
    _say("PASS" if status == 0 else "FAIL: " + "; ".join(reasons))
    _say(f"reports: {output}/{{report.html,summary.md,report.json,junit.xml}}")
    if as_json:
        data = report.to_dict()
        print(json.dumps({"ok": status == 0, "exit_status": status, "output": str(output),
                          "counts": data["counts"], "reasons": reasons,
                          "regressions": [c["nodeid"] for c in
                                          (data["baseline"] or {}).get("regressions", [])],
                          "failures": data["failures"]}))
    return status
