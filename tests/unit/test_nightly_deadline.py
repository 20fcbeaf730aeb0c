"""The nightly's own deadline (`--max-minutes`): it stops the running children as
a first signal would, then as a second after the grace, and the report says so."""

from __future__ import annotations

import signal
import subprocess
import time

from harness.nightly_stop import NightlyStop, interruption, stoppable


def _child(ignore_int: bool) -> subprocess.Popen[bytes]:
    trap = "trap '' INT; " if ignore_int else ""
    return subprocess.Popen(["sh", "-c", f"{trap}sleep 30 & wait"])


def test_the_deadline_stops_children_as_a_first_signal_then_a_second():
    stop = NightlyStop()
    obeys, ignores = _child(False), _child(True)
    time.sleep(0.2)  # both shells have set their traps
    with stop.watching(obeys), stop.watching(ignores):
        stop.expire(0.5, grace_s=0.5)
        assert stop.requested and stop.signum is None
        assert stop.name == "the --max-minutes 0.5 deadline"
        assert obeys.wait(5) == -signal.SIGINT        # as pytest gets it: SIGINT first
        time.sleep(0.2)
        assert ignores.poll() is None, "terminated before the grace ended"
        assert ignores.wait(5) == -signal.SIGTERM     # then as a second signal
    # A second expiry (or a later signal's first stop) changes nothing.
    at = stop.at
    stop.expire(0.5)
    assert stop.at == at


def test_the_report_names_the_deadline_not_a_signal():
    stop = NightlyStop()
    started = time.monotonic()
    assert interruption(stop, [], [], started) is None
    stop.expire(2, grace_s=60)
    words = interruption(stop, ["10.0.2"], [], started)
    assert words is not None
    assert (words["signal"], words["deadline"]) == (None, "the --max-minutes 2 deadline"), words
    assert words["words"].startswith("interrupted by the --max-minutes 2 deadline after 0 s; "
                                     "no run started; not started: QEMU 10.0.2"), words


def test_stoppable_fires_the_deadline_and_a_finished_night_cancels_it():
    with stoppable(max_minutes=0.5 / 60) as stop:   # half a second
        time.sleep(1.0)
        assert stop.deadline == "the --max-minutes 0.00833333 deadline", stop.deadline
    with stoppable(max_minutes=1.0 / 60) as quick:  # ends before its second
        pass
    time.sleep(1.2)
    assert not quick.requested
