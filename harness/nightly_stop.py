"""SIGTERM, SIGINT or the nightly's own deadline: stop the workers, keep what ran,
say so.

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

`--max-minutes` (`NightlyStop.expire`) stops a nightly that outlives its
deadline the same way, as a first signal would; if the children are still
running GRACE_SECONDS later, as a second.  A test that hangs in a way no
deadline of its own catches can thus not hold a night's reports back for good.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

#: The signals a nightly survives to write its reports.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: After the deadline's stop, how long the children get to end before they are
#: terminated (pytest) or killed (a hunt's group).
GRACE_SECONDS = 60.0


@dataclass
class NightlyStop:
    """The stop request of one nightly and the children it must pass on to."""

    signum: int | None = None
    at: float = 0.0             # time.monotonic() of the first signal (or the deadline)
    deadline: str = ""          # "the --max-minutes M deadline" once that stopped it
    _children: list[tuple[subprocess.Popen[Any], bool]] = field(default_factory=list)
    _previous: dict[int, Any] = field(default_factory=dict)

    @property
    def requested(self) -> bool:
        return self.signum is not None or bool(self.deadline)

    @property
    def name(self) -> str:
        """What stopped the nightly: a signal's name or its deadline."""
        return signal.Signals(self.signum).name if self.signum is not None else self.deadline

    def expire(self, minutes: float, grace_s: float = GRACE_SECONDS) -> None:
        """The nightly's deadline (a timer thread): stop as a first signal would,
        and as a second if the children still run `grace_s` later."""
        if self.requested:
            return
        self.deadline, self.at = f"the --max-minutes {minutes:g} deadline", time.monotonic()
        print(f"pci-harness nightly: {self.deadline} passed: stopping the running tests; "
              f"the reports will hold what ran (what still runs in {grace_s:g} s is stopped "
              "at once)", file=sys.stderr, flush=True)
        for proc, group in list(self._children):
            _pass_on(proc, group, True)
        escalate = threading.Timer(grace_s, self._escalate)
        escalate.daemon = True
        escalate.start()

    def _escalate(self) -> None:
        for proc, group in list(self._children):
            _pass_on(proc, group, False)

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = not self.requested
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
            if self.requested:
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
def stoppable(max_minutes: float = 0.0) -> Iterator[NightlyStop]:
    """Install a NightlyStop for the duration of a nightly, with its deadline
    (`max_minutes`, 0 for none)."""
    global ACTIVE
    stop = NightlyStop()
    stop.install()
    ACTIVE = stop
    timer = None
    if max_minutes > 0:
        timer = threading.Timer(max_minutes * 60, stop.expire, args=(max_minutes,))
        timer.daemon = True
        timer.start()
    try:
        yield stop
    finally:
        if timer is not None:
            timer.cancel()
        ACTIVE = None
        stop.restore()


def interruption(stop: NightlyStop, not_started: Sequence[str], runs: Sequence[Any],
                 started: float) -> dict[str, Any] | None:
    """report.json's `interrupted` (None for a nightly that ran to its end): the
    signal, how long after `started` (time.monotonic()) it came, how many
    collected tests did not run, the QEMU runs never started; `runs` are
    RunInfo with their `not_run` lists."""
    if not stop.requested:
        return None
    after_s = stop.at - started
    not_run = sum(len(r.not_run) for r in runs)
    ran = ", ".join(f"QEMU {r.label}: {len(r.not_run)} of its collected tests not run"
                    for r in runs)
    words = (f"interrupted by {stop.name} after {after_s:.0f} s; {ran or 'no run started'}"
             + (f"; not started: QEMU {', '.join(not_started)}" if not_started else ""))
    return {"signal": stop.name if stop.signum is not None else None,
            "deadline": stop.deadline or None, "after_s": round(after_s, 3), "not_run": not_run,
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
