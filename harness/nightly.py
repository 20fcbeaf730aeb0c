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
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import nightly_stop as stopping
from harness.cross_version import cross_version_both_ways, cross_version_machine
from harness.errors import UserError
from harness.lab import LostHost, check_gateways, parse_gateway, surviving
from harness.nightly_boot_stress import boot_stress_run_figures, boot_stress_runs
from harness.paths import cache_root, suite_root
from harness.pytestplugin.seed_index import SEED_ITEMS
from harness.qemu.binary import QemuBinary, find_qemu
from harness.report import hunt
from harness.report.baseline import compare, find_previous, load_baseline
from harness.report.document import (
    HuntResult,
    NightlyReport,
    RunInfo,
    figure_scopes,
    nightly_figures,
)
from harness.report.history import load_history, slowdowns
from harness.report.html import render_html
from harness.report.junit import merge_junit
from harness.report.markdown import render_markdown
from harness.report.matrix import build_items
from harness.report.results import TestResult

#: Tests of the nightly itself: each starts nightlies of its own, which would fight the
#: outer run for the cores.  A nightly deselects them unless --self-tests is given.
SELF_TESTS = ("tests/pci/test_nightly.py", "tests/pci/test_nightly_ssh.py",
              "tests/pci/test_wheel_install.py",
              "tests/unit/test_report_nightly.py")
DIST_MODES = ("load", "loadscope", "loadfile", "loadgroup", "worksteal", "each", "no")
_PYTEST_MEANING = {2: "pytest was interrupted", 3: "pytest hit an internal error",
                   5: "no tests were collected"}


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
    return binaries, machines


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


# ---- one pytest run ----

def workers(jobs: str) -> str:
    """The -n value: "auto" is two workers per CPU.  Guest tests spend much of their
    time waiting (firmware, hotplug button delays, migration, SSH round trips), so one
    worker per core leaves cores idle: on this 2-core host the 10.0.2 suite took 632 s
    with -n 2 and 320 s with -n 4, with no test failing under the extra load."""
    if jobs == "auto":
        return str(2 * (os.cpu_count() or 1))
    return jobs


def pytest_argv(args: argparse.Namespace, binary: QemuBinary, label: str, run_dir: Path,
                machines: Sequence[str]) -> list[str]:
    """The pytest command for one QEMU binary.

    Paths are passed as `--opt=PATH` and no test path is added (pyproject's
    testpaths applies): pytest-xdist rewrites existing local paths for remote
    gateways and rejects those outside its roots.
    """
    argv = [sys.executable, "-m", "pytest", "-p", "harness.report.collect",
            "-p", "no:cacheprovider", "-v", "-rfEX", "--tb=short",
            "--continue-on-collection-errors",
            f"--junitxml={run_dir / 'junit.xml'}", f"--report-results={run_dir / 'results.json'}",
            f"--report-label={label}", f"--report-machines={','.join(machines)}",
            f"--artifacts-dir={run_dir / 'artifacts'}", f"--qemu-binary={binary.path}",
            f"--accel={args.accel}", f"--timeout-multiplier={args.timeout_multiplier}"]
    tx: list[str] = list(getattr(args, "tx", None) or [])
    if not tx or str(args.jobs) != "auto":
        argv += ["-n", workers(str(args.jobs))]
    for spec in tx:
        argv += ["--tx", spec]
    if any(parse_gateway(spec).remote for spec in tx):
        # xdist would try to restart a lost host's worker on the same dead host (an
        # INTERNALERROR that loses most results); we re-run its tests elsewhere instead.
        argv.append("--max-worker-restart=0")
    # worksteal: a worker that runs out of tests takes some from the other's queue.
    # With load, the order of the suite (fast unit tests, then slow guests) left one
    # worker finishing a long tail of guest tests alone: 10.0.2's run sat at one busy
    # core for minutes.
    argv += ["--dist", getattr(args, "dist", None) or "worksteal"]
    if args.keep_artifacts:
        argv.append("--keep-artifacts")
    if args.no_snapshot:
        argv.append("--no-snapshot")
    if not getattr(args, "self_tests", False):
        argv += [f"--deselect={path}" for path in SELF_TESTS]
    return argv + list(args.pytest_args)


def suite_dir(args: argparse.Namespace) -> Path:
    """The directory pytest runs in: --suite, else the shipped conformance suite."""
    if getattr(args, "suite", None) is None:
        return suite_root()
    path = Path(args.suite).absolute()
    if not path.is_dir():
        raise UserError(f"--suite {args.suite}: no such directory",
                        fix="give the directory that holds the tests to run")
    return path


def _run_pytest(argv: Sequence[str], log_path: Path, cwd: Path) -> int:
    """Run pytest in the suite's directory, with its per-test progress on our stderr
    and in pytest.log.  No bytecode is written: the suite may be an installed package."""
    with log_path.open("w") as log:
        log.write(f"$ cd {cwd} && " + " ".join(argv) + "\n")
        # Its own session: a stop reaches pytest once, through NightlyStop (SIGINT; pytest
        # takes it even when the nightly was started with `&`, which ignores SIGINT:
        # NightlyStop's handler replaces that, and exec resets a handler to default).
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                                start_new_session=True,
                                preexec_fn=stopping.dies_with_parent())  # noqa: PLW1509 - prctl
        assert proc.stdout is not None
        try:
            with stopping.watching(proc):
                hunt.pump(proc.stdout, [sys.stderr, log]).join()
                return proc.wait()
        finally:
            if proc.poll() is None:  # we are being interrupted: take pytest down with us
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _load_results(path: Path) -> tuple[list[TestResult], dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return [], {}
    return [TestResult.from_dict(t) for t in data.get("tests", [])], data


def _previous_durations(output: Path, version: str) -> dict[str, float]:
    """node id -> seconds on the same QEMU version in the newest earlier report
    next to OUTPUT; empty when there is none or it cannot be read."""
    previous = find_previous(output.parent, output)
    if previous is None:
        return {}
    try:
        data = json.loads((previous / "report.json").read_text())
        return {str(t["nodeid"]): float(t["duration"]) for t in data.get("tests", ())
                if t.get("qemu_version") == version and t.get("duration") is not None}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _run_one(args: argparse.Namespace, binary: QemuBinary, label: str, output: Path,
             machines: Sequence[str]) -> tuple[RunInfo, list[TestResult], list[str]]:
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = pytest_argv(args, binary, label, run_dir, machines)
    durations = _previous_durations(output, binary.version)
    if durations and not any(parse_gateway(spec).remote for spec in getattr(args, "tx", None)
                             or ()):
        # (A remote host cannot read a file of this one; every worker must sort alike.)
        order = run_dir / "previous-durations.json"
        order.write_text(json.dumps(durations))
        argv.insert(argv.index("--tb=short") + 1, f"--report-order-by={order}")
    started = time.monotonic()
    status = _run_pytest(argv, run_dir / "pytest.log", suite_dir(args))
    elapsed = time.monotonic() - started
    if status == 4:
        tail = "".join((run_dir / "pytest.log").read_text().splitlines(True)[-8:])
        raise UserError("pytest rejected the arguments", tail=tail,
                        fix="check the arguments after `--`")
    tests, data = _load_results(run_dir / "results.json")
    not_run: list[str] = []
    if stopping.stopped():  # workers stopped on purpose: not lost hosts, nothing to re-run
        not_run = stopping.unfinished(list(data.get("collected") or []),
                             {t.nodeid: (t.outcome, t.message) for t in tests})
        tests, lost = [t for t in tests if t.nodeid not in not_run], list[LostHost]()
    else:
        tests, lost = _recover_lost_hosts(args, binary, label, run_dir, machines, tests, data)
    problems = [f"QEMU {label}: host lost: {host.words()}" for host in lost]
    if stopping.stopped():
        pass  # the report says it once, with the tests not run (NightlyReport.interrupted)
    elif not data:
        problems.append(f"QEMU {label}: pytest exit {status} and no results were recorded "
                        f"(see {run_dir / 'pytest.log'})")
    elif status in _PYTEST_MEANING:
        problems.append(f"QEMU {label}: {_PYTEST_MEANING[status]} (pytest exit {status})")
    elif status == 1 and not lost and not any(t.bad for t in tests):
        problems.append(f"QEMU {label}: pytest exit 1 without a failing test recorded")
    accel = (data.get("qemu") or {}).get("accel")
    info = RunInfo(label=label, qemu_binary=str(binary.path), qemu_version=binary.version,
                   accel=accel, pytest_exit=status, duration_s=round(elapsed, 3),
                   directory=str(run_dir.relative_to(output)),
                   workers=tuple(data.get("workers") or ()),
                   lost_hosts=tuple(host.to_dict() for host in lost), not_run=tuple(not_run))
    return info, tests, problems


def _recover_lost_hosts(args: argparse.Namespace, binary: QemuBinary, label: str,
                        run_dir: Path, machines: Sequence[str], tests: list[TestResult],
                        data: dict[str, Any]) -> tuple[list[TestResult], list[LostHost]]:
    """Every collected test gets an outcome even when a host went away mid-run.

    xdist (with --max-worker-restart=0) stops the whole run when a worker is
    lost: the test that worker ran is failed as a crash, and every test not yet
    handed out gets no report at all.  Those are run again on the hosts that are
    left; with none left they are errors that name the lost host.
    """
    lost_workers = [w for w in data.get("lost_workers") or [] if isinstance(w, dict)]
    if not lost_workers:
        return tests, []
    crashed = {str(w["running"]) for w in lost_workers if w.get("running")}
    have = {t.nodeid for t in tests if t.nodeid not in crashed}
    missing = [n for n in data.get("collected") or [] if n not in have]
    missing += sorted(crashed - set(missing))
    survivors = surviving(list(getattr(args, "tx", None) or []),
                          [str(w["spec"]) for w in lost_workers])
    rerun: dict[str, TestResult] = {}
    if survivors and missing:
        _say(f"QEMU {label}: {len(missing)} test(s) of a lost host run again on "
             f"{', '.join(survivors)}")
        rerun_dir = run_dir / "rerun"
        rerun_dir.mkdir(parents=True, exist_ok=True)
        (rerun_dir / "nodeids.txt").write_text("\n".join(missing) + "\n")
        again = argparse.Namespace(**vars(args))
        again.tx = survivors
        argv = pytest_argv(again, binary, label, rerun_dir, machines)
        argv.append(f"--report-only-nodeids={rerun_dir / 'nodeids.txt'}")
        _run_pytest(argv, rerun_dir / "pytest.log", suite_dir(args))
        rerun = {t.nodeid: t for t in _load_results(rerun_dir / "results.json")[0]}
    words = "; ".join(f"{w['worker']} ({w['spec']})" for w in lost_workers)
    kept = [t for t in tests if t.nodeid not in missing]
    for nodeid in missing:
        if nodeid in rerun:
            kept.append(rerun[nodeid])
        else:
            kept.append(TestResult(nodeid=nodeid, outcome="error", duration=0.0, run=label,
                                   qemu_version=binary.version, qemu_binary=str(binary.path),
                                   message=f"host lost before this test had an outcome: {words}"
                                   + ("" if survivors else " (no other host left to run it)")))
    hosts = []
    for w in lost_workers:
        running = (str(w["running"]),) if w.get("running") else ()
        hosts.append(LostHost(worker=str(w["worker"]), spec=str(w["spec"]),
                              error=str(w.get("error") or ""), running=running,
                              not_run=tuple(n for n in missing if n not in running),
                              rerun_on=tuple(survivors) if rerun else (),
                              outcomes={n: (rerun[n].outcome if n in rerun else "error")
                                        for n in missing}))
    return kept, hosts


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
    with stopping.stoppable() as stop:
        for index, (binary, label) in enumerate(zip(binaries, labels)):
            if stop.requested:
                break
            _say(f"[{index + 1}/{len(binaries)}] QEMU {label} ({binary.path}) on {machines}")
            info, results, trouble = _run_one(args, binary, label, output, machines)
            runs.append(info)
            tests += results
            problems += trouble
        boot_stress = boot_stress_runs(args, binaries, labels, machines, output)
        hunts = [_hunt(args, b, l, output) for b, l in zip(binaries, labels)
                 if not stopping.stopped()] if args.until_fail_minutes > 0 else []
        if cross and not stop.requested:
            hunts += cross_version_both_ways(args, binaries, labels, cross_machine, output)
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
    diff = compare([r.ref() for r in runs], tests, items, baseline, args.pytest_args) \
        if baseline else None
    duration = time.monotonic() - clock
    figures = nightly_figures(runs, tests, hunts, duration, socket.gethostname())
    if interrupted:  # a cut-short night's wall times are no reference for later ones
        figures = {k: v for k, v in figures.items() if not k.endswith(" wall_s")}
    figures |= boot_stress_run_figures(boot_stress, figure_scopes(runs, tests,
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
    if stop.signum is not None and interrupted:
        _say(f"{interrupted['words']}: reports for the {len(tests)} test(s) that ran are in "
             f"{output}; exit {128 + stop.signum}")
        return 128 + stop.signum
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
