"""SIGTERM or SIGINT during a nightly: stop the workers, keep what ran, say so.

A CI job that times out sends SIGTERM to the nightly; a person presses
Ctrl-C.  Either way the tests that already ran are results worth keeping, so
the nightly does not die on the signal.  `NightlyStop` records the first
signal and passes it on to the child that runs (pytest gets SIGINT: it stops
its xdist workers, whose QEMUs die with them, and still writes results.json;
a hunt or boot-stress child gets SIGTERM, which ends its run with its
summary).  The nightly then starts nothing new and writes every report for
what ran, marked interrupted with the signal and the tests not run
(harness/nightly.py).  A second signal no longer waits: the child is
terminated (pytest) or killed (a hunt's process group).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

#: The signals a nightly survives to write its reports.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class NightlyStop:
    """The stop request of one nightly and the children it must pass on to."""

    signum: int | None = None
    at: float = 0.0             # time.monotonic() of the first signal
    _children: list[tuple[subprocess.Popen[Any], bool]] = field(default_factory=list)
    _previous: dict[int, Any] = field(default_factory=dict)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum, self.at = signum, time.monotonic()
            print(f"pci-harness nightly: {signal.Signals(signum).name}: stopping the running "
                  "tests; the reports will hold what ran (a second signal stops at once)",
                  file=sys.stderr, flush=True)
        for proc, group in list(self._children):
            _pass_on(proc, group, first)

    @contextmanager
    def watching(self, proc: subprocess.Popen[Any], group: bool = False) -> Iterator[None]:
        """Pass a stop on to `proc` (to its process group when `group`) while it runs;
        a stop that came before it started reaches it at once."""
        self._children.append((proc, group))
        try:
            if self.signum is not None:
                _pass_on(proc, group, True)
            yield
        finally:
            self._children.remove((proc, group))


def _pass_on(proc: subprocess.Popen[Any], group: bool, first: bool) -> None:
    """First stop: SIGINT to pytest, SIGTERM to a hunt's group; second: terminate/kill."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM if first else signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGINT if first else signal.SIGTERM)
    except ProcessLookupError:
        pass


#: The stop of the nightly running in this process (None outside a nightly).
ACTIVE: NightlyStop | None = None


@contextmanager
def stoppable() -> Iterator[NightlyStop]:
    """Install a NightlyStop for the duration of a nightly."""
    global ACTIVE
    stop = NightlyStop()
    stop.install()
    ACTIVE = stop
    try:
        yield stop
    finally:
        ACTIVE = None
        stop.restore()


def interruption(stop: NightlyStop, not_started: Sequence[str], runs: Sequence[Any],
                 started: float) -> dict[str, Any] | None:
    """report.json's `interrupted` (None for a nightly that ran to its end): the
    signal, how long after `started` (time.monotonic()) it came, how many
    collected tests did not run, the QEMU runs never started; `runs` are
    RunInfo with their `not_run` lists."""
    if stop.signum is None:
        return None
    after_s = stop.at - started
    not_run = sum(len(r.not_run) for r in runs)
    ran = ", ".join(f"QEMU {r.label}: {len(r.not_run)} of its collected tests not run"
                    for r in runs)
    words = (f"interrupted by {stop.name} after {after_s:.0f} s; {ran or 'no run started'}"
             + (f"; not started: QEMU {', '.join(not_started)}" if not_started else ""))
    return {"signal": stop.name, "after_s": round(after_s, 3), "not_run": not_run,
            "runs_not_started": list(not_started), "words": words}


def stopped() -> bool:
    """True once the running nightly was asked to stop: start nothing new."""
    return ACTIVE is not None and ACTIVE.requested


def unfinished(collected: list[str], outcomes: dict[str, tuple[str, str]]) -> list[str]:
    """The collected tests a stopped run did not finish: no outcome at all, or the
    "skipped: not run" pytest gives a test whose call never came (it was running)."""
    return [n for n in collected if outcomes.get(n, ("skipped", "not run")) == ("skipped", "not run")]


@contextmanager
def watching(proc: subprocess.Popen[Any], group: bool = False) -> Iterator[None]:
    """ACTIVE.watching(proc), or nothing outside a nightly."""
    if ACTIVE is None:
        yield
        return
    with ACTIVE.watching(proc, group):
        yield


_PR_SET_PDEATHSIG = 1


def dies_with_parent() -> Callable[[], None]:
    """preexec_fn for the nightly's pytest: it runs in its own session (so a
    terminal's Ctrl-C reaches it once, through NightlyStop), which also takes it
    out of a process-group kill; PR_SET_PDEATHSIG makes it die with the nightly
    instead (a kill -9 of the nightly leaves no pytest, hence no worker or QEMU)."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the nightly died between fork and prctl
            os._exit(1)
    return setup
