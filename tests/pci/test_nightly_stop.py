"""A real nightly stopped as a CI timeout (SIGTERM) or a person (Ctrl-C: SIGINT to
the foreground process group) stops it: its workers stop, every report is
written for the tests that ran, marked interrupted with the signal and the
tests not run, stderr says so, the exit status is 128 + the signal, and no
QEMU of it is left.  (issue 23: `nightly -- -m smoke` SIGTERMed after 25 s
exited 143 at once, said nothing and wrote no report.)

Each test starts a nightly of its own, so a nightly leaves them out
(harness.nightly_suite.SELF_TESTS; `nightly --self-tests` runs them) and
bin/test runs them in the smoke set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

CHECKOUT = Path(__file__).resolve().parents[2]
#: The issue's figure: a CI timeout 25 s into the run.
STOP_AFTER_S = 25.0


def _qemus_under(directory: Path) -> list[int]:
    """Live QEMU processes whose working directory (their artifact dir) is under `directory`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in argv0 and state != "Z" and cwd.startswith(str(directory)):
            found.append(int(proc.name))
    return found


def _processes_of(out: Path) -> list[str]:
    """Live pytest or QEMU processes of the nightly writing to `out` (its command line
    or, for QEMU, its artifact directory under it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(out) in argv and ("pytest" in argv or "qemu-system" in argv):
            found.append(f"{proc.name}: {argv[:200]}")
    return found + [f"{pid}: QEMU in {out}" for pid in _qemus_under(out)]


def _cmdline(pid: int) -> bytes:
    """The command line of a live (non-zombie) process, b"" when it is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return b"" if state == "Z" else Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(parent: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _start_nightly(tmp_path: Path, stop_after_s: float
                   ) -> tuple[subprocess.Popen[str], list[str], Path]:
    """A real `nightly -- -m smoke`, running until `stop_after_s` passed and a test
    passed; its stderr lines keep coming into the list."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "nightly", "--accel", "tcg", "--output", str(out),
         "--boot-stress-boots", "0", "--timeout-multiplier", "4", "--", "-m", "smoke"],
        cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: a terminal's Ctrl-C reaches it all
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    started = time.monotonic()
    while (time.monotonic() - started < stop_after_s
           or not any(" PASSED " in line for line in lines)):
        assert proc.poll() is None, "the nightly ended before it was stopped:\n" + "".join(lines)
        assert time.monotonic() - started < 300, "no test passed in 300 s:\n" + "".join(lines)
        time.sleep(0.5)
    return proc, lines, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_nightly_reports_what_ran_and_what_did_not(tmp_path: Path, signum: int) -> None:
    proc, lines, out = _start_nightly(tmp_path, STOP_AFTER_S)
    passed_before = {line.split(" PASSED ")[1].strip() for line in lines if " PASSED " in line}
    if signum == signal.SIGTERM:
        proc.send_signal(signum)          # a CI timeout: the nightly's own pid
    else:
        os.killpg(proc.pid, signum)       # Ctrl-C: the whole foreground group
    stopped_at = time.monotonic()
    try:
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - stopped_at
    time.sleep(0.5)  # the reader drains the last lines
    stderr = "".join(lines)
    name = signal.Signals(signum).name

    assert status == 128 + signum, f"exit {status}, expected {128 + signum}\n{stderr[-3000:]}"
    assert took < 60, f"took {took:.0f} s to stop after {name}"
    assert f"{name}: stopping the running tests" in stderr, stderr[-3000:]
    assert f"interrupted by {name} after" in stderr and "reports for the" in stderr, \
        stderr[-3000:]
    for name_ in ("report.json", "report.html", "summary.md", "junit.xml"):
        assert (out / name_).is_file(), f"{name_} missing: {sorted(p.name for p in out.iterdir())}"

    report = json.loads((out / "report.json").read_text())
    results = json.loads(next(out.glob("runs/*/results.json")).read_text())
    interrupted = report["interrupted"]
    assert interrupted and interrupted["signal"] == name, interrupted
    assert STOP_AFTER_S - 5 < interrupted["after_s"] < STOP_AFTER_S + 120, interrupted
    ran = {t["nodeid"]: t["outcome"] for t in report["tests"]}
    not_run = report["runs"][0]["not_run"]
    # Every collected test is either a result or named as not run, never both.
    assert sorted(set(ran) | set(not_run)) == sorted(results["collected"]), (ran, not_run)
    assert not set(ran) & set(not_run) and not_run, (ran, not_run)
    assert interrupted["not_run"] == len(not_run)
    # The tests seen passing before the signal are in the report as passed.
    assert passed_before and all(ran.get(n) == "passed" for n in passed_before), \
        (passed_before, ran)
    assert report["ok"] is False and any(f"interrupted by {name}" in r for r in report["reasons"])
    summary = (out / "summary.md").read_text()
    assert f"**interrupted by {name} after" in summary and f"- not run: `{not_run[0]}`" \
        in summary, summary[:2000]
    html = (out / "report.html").read_text()
    assert f"interrupted by {name} after" in html and f"not run ({len(not_run)})" in html
    time.sleep(1)
    assert _qemus_under(out) == [], "QEMU left running after the nightly stopped"


def test_a_killed_nightly_leaves_no_pytest_and_no_qemu(tmp_path: Path) -> None:
    """pytest runs in its own session (so a stop reaches it once), which takes it out
    of a process-group kill: it must die with the nightly (PR_SET_PDEATHSIG)."""
    proc, _, out = _start_nightly(tmp_path, 5.0)
    controller = [pid for pid in _children(proc.pid) if b"pytest" in _cmdline(pid)]
    assert len(controller) == 1, f"the nightly's pytest: {controller}"
    proc.kill()
    proc.wait(timeout=10)
    # At once, not when its next line of output meets the closed pipe (SIGPIPE).
    gone_by = time.monotonic() + 2
    while _cmdline(controller[0]) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not _cmdline(controller[0]), "pytest outlived the killed nightly by 2 s"
    deadline = time.monotonic() + 20
    while _processes_of(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_of(out) == [], "left running after kill -9 of the nightly"


def test_a_nightly_past_its_max_minutes_stops_itself_and_fails(tmp_path: Path) -> None:
    """`--max-minutes`: the nightly stops its own tests at the deadline as SIGTERM
    would, writes every report for what ran, and fails (exit 1) saying why."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    minutes = 0.5
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "nightly", "--accel", "tcg", "--output", str(out),
         "--boot-stress-boots", "0", "--timeout-multiplier", "4", "--max-minutes",
         str(minutes), "--", "-m", "smoke"],
        check=False, cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=300,
        start_new_session=True)
    took = time.monotonic() - started
    deadline = f"the --max-minutes {minutes:g} deadline"
    assert proc.returncode == 1, f"exit {proc.returncode}, expected 1\n{proc.stderr[-3000:]}"
    assert minutes * 60 <= took < minutes * 60 + 90, f"ended after {took:.0f} s"
    assert f"{deadline} passed: stopping the running tests" in proc.stderr, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    interrupted = report["interrupted"]
    assert interrupted and (interrupted["signal"], interrupted["deadline"]) == (None, deadline), \
        interrupted
    assert minutes * 60 - 1 < interrupted["after_s"] < minutes * 60 + 30, interrupted
    assert interrupted["not_run"] > 0 and report["runs"][0]["not_run"], interrupted
    assert report["ok"] is False and any(f"interrupted by {deadline}" in r
                                         for r in report["reasons"]), report["reasons"]
    time.sleep(1)
    assert _processes_of(out) == [], "left running after the nightly's deadline"
