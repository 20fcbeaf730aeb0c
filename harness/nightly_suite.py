"""One QEMU binary's suite under pytest: its command line, the run, its results.

The nightly (harness/nightly.py) runs one of these per `--qemu`; when it has
several and no remote gateways, they run at the same time, each with its
share of the workers, so one binary's long tests overlap the other's
(harness/nightly.py says why).  A lost host's tests are run again on the
hosts that are left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from harness import nightly_boot_stress as boot_runs
from harness import nightly_stop as stopping
from harness.errors import UserError
from harness.lab import LostHost, parse_gateway, surviving
from harness.paths import suite_root
from harness.qemu.binary import QemuBinary
from harness.report import hunt
from harness.report.baseline import find_previous
from harness.report.document import HuntResult, RunInfo
from harness.report.results import TestResult

#: Tests of the nightly itself: each starts nightlies of its own, which would fight the
#: outer run for the cores.  A nightly deselects them unless --self-tests is given.
SELF_TESTS = ("tests/pci/test_nightly.py", "tests/pci/test_nightly_ssh.py",
              "tests/pci/test_nightly_stop.py", "tests/pci/test_wheel_install.py",
              "tests/unit/test_report_nightly.py")
#: Tests of the harness itself, whose verdict does not depend on the QEMU under test:
#: with several --qemu they run in one suite only (`once_per_night`), not once per
#: binary (85 of each suite's 1,200-1,800 test-seconds on 2 cores).
ONCE_PER_NIGHT = ("tests/unit/",)
DIST_MODES = ("load", "loadscope", "loadfile", "loadgroup", "worksteal", "each", "no")
#: One suite's outcome: its run, its tests, the problems to report.
SuiteOutcome = tuple[RunInfo, list[TestResult], list[str]]
_PYTEST_MEANING = {2: "pytest was interrupted", 3: "pytest hit an internal error",
                   5: "no tests were collected"}


def _say(message: str) -> None:
    print(f"pci-harness nightly: {message}", file=sys.stderr, flush=True)

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
                machines: Sequence[str], *, once_per_night: bool = True) -> list[str]:
    """The pytest command for one QEMU binary (ONCE_PER_NIGHT's tests only when
    ONCE_PER_NIGHT is true: the suite that carries them).

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
    argv.append(f"--firmware={boot_runs.suite_firmware(args)}")  # boot-stress: every one
    if args.no_snapshot:
        argv.append("--no-snapshot")
    if not getattr(args, "self_tests", False):
        argv += [f"--deselect={path}" for path in SELF_TESTS]
    if not once_per_night:
        argv += [f"--deselect={path}" for path in ONCE_PER_NIGHT]
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


def run_suite(args: argparse.Namespace, binary: QemuBinary, label: str, output: Path,
              machines: Sequence[str], *, once_per_night: bool = True) -> SuiteOutcome:
    run_dir = output / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = pytest_argv(args, binary, label, run_dir, machines, once_per_night=once_per_night)
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
        tests, lost = _recover_lost_hosts(args, binary, label, run_dir, machines, tests, data,
                                          once_per_night)
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
                   firmware=boot_runs.suite_firmware_label(args, binary),
                   accel=accel, pytest_exit=status, duration_s=round(elapsed, 3),
                   directory=str(run_dir.relative_to(output)),
                   workers=tuple(data.get("workers") or ()),
                   lost_hosts=tuple(host.to_dict() for host in lost), not_run=tuple(not_run))
    return info, tests, problems


def _recover_lost_hosts(args: argparse.Namespace, binary: QemuBinary, label: str,
                        run_dir: Path, machines: Sequence[str], tests: list[TestResult],
                        data: dict[str, Any], once_per_night: bool
                        ) -> tuple[list[TestResult], list[LostHost]]:
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
        argv = pytest_argv(again, binary, label, rerun_dir, machines,
                           once_per_night=once_per_night)
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




def shares(args: argparse.Namespace, count: int) -> list[argparse.Namespace]:
    """The arguments of COUNT suite runs that go at the same time: the workers split
    between them (-n 4 becomes 2 + 2), everything else the same."""
    total = workers(str(args.jobs))
    share = str(max(1, int(total) // count)) if total.isdigit() else total
    return [argparse.Namespace(**(vars(args) | {"jobs": share})) for _ in range(count)]


def carrier(binaries: Sequence[QemuBinary], output: Path) -> int:
    """The index of the suite that runs ONCE_PER_NIGHT's tests: the one whose own
    tests took least time on the last night (the most time to spare), else the
    first.  ONCE_PER_NIGHT's tests are left out of the sums: counted, they would
    hand the duty back and forth from night to night."""
    totals = [sum(d for nodeid, d in _previous_durations(output, b.version).items()
                  if not nodeid.startswith(ONCE_PER_NIGHT)) for b in binaries]
    if len(binaries) < 2 or not all(totals):
        return 0
    return totals.index(min(totals))


def run_suites(args: argparse.Namespace, binaries: Sequence[QemuBinary], labels: Sequence[str],
               output: Path, machines: Sequence[str],
               extra: Sequence[Callable[[], HuntResult]] = ()
               ) -> tuple[list[SuiteOutcome], list[HuntResult | None]]:
    """Every binary's suite: at the same time (`--qemu-runs together`, the default
    without remote gateways), else one after the other; then EXTRA's runs (the
    boot-stress cells, the cross-version runs), each taken by whichever suite's
    thread is free first; their results in EXTRA's order, None for one a stop
    left unrun.

    Why together: a suite's wall time is mostly its longest tests (the 24-hop memory
    ping-pong, the AHCI boots) while the other workers idle; two QEMUs' suites on one
    worker pool (2 + 2 instead of 4, then 4) overlap those tails.  Why a shared queue
    for EXTRA: the shorter suite's thread runs the cells while the longer suite is
    still going, instead of every cell waiting for the last suite (the 8 cells of a
    two-firmware night took 224 s after both suites had ended).
    """
    together = (len(binaries) > 1 and getattr(args, "qemu_runs", "together") == "together"
                and not getattr(args, "tx", None))
    once = carrier(binaries, output)
    queue = list(enumerate(extra))
    lock = threading.Lock()
    done_extra: dict[int, HuntResult] = {}

    def take_extra() -> None:
        while not stopping.stopped():
            with lock:
                if not queue:
                    return
                index, work = queue.pop(0)
            done_extra[index] = work()

    def suite(index: int, a: argparse.Namespace) -> SuiteOutcome:
        binary, label = binaries[index], labels[index]
        outcome = run_suite(a, binary, label, output, machines, once_per_night=index == once)
        take_extra()
        return outcome

    if not together:
        done = []
        for index, (binary, label) in enumerate(zip(binaries, labels)):
            if stopping.stopped():
                break
            _say(f"[{index + 1}/{len(binaries)}] QEMU {label} ({binary.path}) on {machines}")
            done.append(run_suite(args, binary, label, output, machines,
                                  once_per_night=index == once))
        take_extra()
        return done, [done_extra.get(i) for i in range(len(extra))]
    each = shares(args, len(binaries))
    _say(f"{len(binaries)} QEMUs at the same time on {machines}, -n {each[0].jobs} each: "
         + ", ".join(f"{label} ({binary.path})" for binary, label in zip(binaries, labels)))
    with ThreadPoolExecutor(len(binaries), thread_name_prefix="suite") as pool:
        futures = [pool.submit(suite, index, a) for index, a in enumerate(each)]
        # Short waits: the main thread takes SIGTERM/SIGINT between them (NightlyStop
        # passes the stop on to every pytest).
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.5)
        return [f.result() for f in futures], [done_extra.get(i) for i in range(len(extra))]
