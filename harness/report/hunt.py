"""The bounded ping-pong crash hunt at the end of a nightly run.

The hunt is `pci-harness pingpong --until-fail --max-time S --json`, run as a
subprocess so that a QEMU crash, a hang or a harness bug in it cannot take the
nightly's reports down with it.  Its last stdout line is its JSON verdict.
Availability is checked before the suite runs: a missing verb is a clear
input error up front, never a silent skip after fifteen minutes of tests.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from harness.errors import UserError
from harness.nightly_stop import watching
from harness.report.document import HuntResult

#: The options the nightly needs from the verb.
REQUIRED_FLAGS = ("--until-fail", "--max-time", "--json", "--load", "--keep-states")
#: Wall-clock slack over --max-time before the hunt is killed (boot, last hop, shutdown).
SLACK_S = 300.0


def check_available() -> None:
    """UserError unless `pci-harness pingpong` with the needed flags is there."""
    proc = subprocess.run([sys.executable, "-m", "harness", "pingpong", "--help"],
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    missing = [f for f in REQUIRED_FLAGS if f not in proc.stdout]
    if proc.returncode != 0 or missing:
        why = (f"lacks {', '.join(missing)}" if proc.returncode == 0
               else "does not exist in this installation")
        raise UserError(f"--until-fail-minutes needs `pci-harness pingpong --until-fail "
                        f"--max-time S --json`, and the pingpong verb {why}",
                        fix="update the checkout (harness/cli/pingpong.py) or run without "
                            "--until-fail-minutes")


def pump(stream: IO[str], sinks: Sequence[IO[str]],
         tail: collections.deque[str] | None = None) -> threading.Thread:
    """Copy a child's output line by line to every sink (progress + log file),
    keeping the last lines in `tail` when given."""
    def run() -> None:
        for line in stream:
            for sink in sinks:
                sink.write(line)
                sink.flush()
            if tail is not None and line.strip():
                tail.append(line.rstrip())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


_ERROR_LINE = re.compile(r"(Error|Failure|Exception|FAILED|error:)")


def _last_words(lines: Sequence[str]) -> str:
    """The line of a dying child's stderr that says why: the last error line, else the last."""
    found = [line for line in lines if _ERROR_LINE.search(line)]
    return (found or list(lines) or [""])[-1].strip()[:400]


def run_hunt(run: str, command: Sequence[str], seconds: float, log_path: Path,
             artifacts: Path, timeout_multiplier: float = 1.0) -> HuntResult:
    """Run one hunt; its stderr goes to our stderr and `log_path`."""
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(artifacts))
    started = time.monotonic()
    limit = seconds + SLACK_S * timeout_multiplier
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        last: collections.deque[str] = collections.deque(maxlen=40)
        err = pump(proc.stderr, [sys.stderr, log], last)
        captured = io.StringIO()
        out_thread = pump(proc.stdout, [captured])  # one reader per pipe: no communicate()
        error = None
        try:
            with watching(proc, group=True):  # a stopped nightly ends the hunt with its summary
                proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            error = f"no verdict within {limit:.0f} s (--max-time {seconds:.0f} s): killed"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        err.join(timeout=5)
        out_thread.join(timeout=5)
        out = captured.getvalue()
        log.write("--- stdout ---\n" + (out or ""))
    result = None
    lines = [line for line in (out or "").splitlines() if line.strip()]
    if lines:
        try:
            parsed = json.loads(lines[-1])
            result = parsed if isinstance(parsed, dict) else None
        except ValueError:
            result = None
    if result is None and error is None:
        error = (f"exit status {proc.returncode} without a JSON verdict"
                 + (f"; it said: {why}" if (why := _last_words(last)) else ""))
    return HuntResult(run=run, command=tuple(command), exit_status=proc.returncode,
                      duration_s=round(time.monotonic() - started, 3), result=result,
                      error=error)
