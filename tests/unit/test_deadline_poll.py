"""Deadline.poll: the one polling loop of the load checks."""

from __future__ import annotations

import time

from harness.deadline import Deadline


def test_poll_returns_the_first_answer_that_is_not_none() -> None:
    answers = iter([None, None, 0, 7])
    assert Deadline(5, "x", scaled=False).poll(lambda: next(answers), interval=0.001) == 0


def test_poll_gives_none_at_expiry_after_one_last_probe() -> None:
    calls = []
    t0 = time.monotonic()
    assert Deadline(0.2, "x", scaled=False).poll(lambda: calls.append(1), interval=0.01) is None
    assert 0.2 <= time.monotonic() - t0 < 1.0, time.monotonic() - t0
    assert len(calls) >= 2


def test_an_expired_deadline_still_asks_once() -> None:
    deadline = Deadline(0, "x", scaled=False)
    assert deadline.poll(lambda: "ready") == "ready"
