"""Folding pytest's phase reports into one outcome per test (no QEMU)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.report.results import (
    REPORT_ATTRIBUTE,
    TestResult,
    counts,
    fold,
    result_from_reports,
)


@dataclass
class Phase:
    """The attributes of a pytest TestReport that the folding reads."""

    when: str
    outcome: str
    text: str = ""
    duration: float = 1.0
    user_properties: list[tuple[str, object]] = field(default_factory=list)
    longrepr: object = None

    @property
    def longreprtext(self) -> str:
        return self.text


def xfail_phase(when: str, outcome: str, reason: str, text: str = "") -> Phase:
    phase = Phase(when, outcome, text)
    phase.wasxfail = reason  # type: ignore[attr-defined]
    return phase


OK_SETUP, OK_TEARDOWN = Phase("setup", "passed"), Phase("teardown", "passed")


@pytest.mark.parametrize("phases, outcome, message", [
    ([OK_SETUP, Phase("call", "passed"), OK_TEARDOWN], "passed", ""),
    ([OK_SETUP, Phase("call", "failed", "E  assert 1 == 2\nmore"), OK_TEARDOWN],
     "failed", "E  assert 1 == 2"),
    ([Phase("setup", "failed", "GuestNotReady: no SSH"), OK_TEARDOWN],
     "error", "setup: GuestNotReady: no SSH"),
    ([OK_SETUP, Phase("call", "passed"), Phase("teardown", "failed", "QEMU leaked")],
     "error", "teardown: QEMU leaked"),
    ([OK_SETUP, xfail_phase("call", "skipped", "master-abort: reads return 0"), OK_TEARDOWN],
     "xfailed", "master-abort: reads return 0"),
    ([OK_SETUP, xfail_phase("call", "passed", "vga: gap"), OK_TEARDOWN],
     "xpassed", "unexpected pass of an xfail: vga: gap"),
    # pytest-xdist puts the worker line above pytest's "[XPASS(strict)] reason".
    ([OK_SETUP, Phase("call", "failed", "[gw1] linux -- Python 3.11.7 /v/bin/python\n"
                      "[XPASS(strict)] intx-active-low: DSDT says ActiveHigh"), OK_TEARDOWN],
     "xpassed", "unexpected pass of a strict xfail: intx-active-low: DSDT says ActiveHigh"),
    ([Phase("setup", "skipped", "Skipped: no KVM"), OK_TEARDOWN], "skipped", "Skipped: no KVM"),
    ([Phase("???", "failed", "worker 'gw0' crashed while running 't.py::test'")],
     "failed", "worker 'gw0' crashed while running 't.py::test'"),
    ([Phase("collect", "failed", "ImportError: no module named x")],
     "error", "ImportError: no module named x"),
])
def test_fold(phases, outcome, message):
    got, got_message, _, _ = fold(phases)
    assert (got, got_message) == (outcome, message)


def test_failed_call_keeps_the_teardown_failure_text():
    outcome, _, text, _ = fold([OK_SETUP, Phase("call", "failed", "E  body"),
                                Phase("teardown", "failed", "E  leak")])
    assert outcome == "failed"
    assert "E  body" in text and "E  leak" in text, text


def test_message_skips_the_xdist_worker_line():
    _, message, _, _ = fold([OK_SETUP, Phase("call", "failed", "[gw3] linux -- Python 3.11 /p\n"
                                             "AssertionError: 0 vs 0xffffffff"), OK_TEARDOWN])
    assert message == "AssertionError: 0 vs 0xffffffff"


def test_properties_from_every_phase_are_merged():
    setup = Phase("setup", "passed", user_properties=[("seed", "master-abort")])
    setattr(setup, REPORT_ATTRIBUTE, {"machine": "pc-q35-6.0", "machine_kind": "q35",
                                      "host": "kvm-host-3"})
    call = Phase("call", "failed", "E  boom", user_properties=[("seed", "master-abort")])
    teardown = Phase("teardown", "passed",
                     user_properties=[("seed", "master-abort"), ("artifacts", "/a/t")])
    setattr(teardown, REPORT_ATTRIBUTE, {"machine": "pc-q35-6.0", "console_tail": {"src": "oops"},
                                         "cpu_s": 4.25})
    result = result_from_reports("t.py::test", [setup, call, teardown], run="7.2.22",
                                 qemu_version="7.2.22", qemu_binary="/q", worker="gw2")
    assert (result.outcome, result.seed, result.machine, result.machine_kind, result.host,
            result.artifacts, dict(result.console_tail), result.worker, result.duration,
            result.cpu_s) == \
        ("failed", "master-abort", "pc-q35-6.0", "q35", "kvm-host-3", "/a/t", {"src": "oops"},
         "gw2", 3.0, 4.25)


def test_round_trip_through_a_dict():
    result = TestResult("t.py::x[pc]", "xfailed", 2.5, run="9.1.0", machine="pc", seed="s",
                        xfail_reason="s: why", console_tail={"guest": "tail"}, cpu_s=1.5)
    assert TestResult.from_dict(result.to_dict() | {"unknown_later_field": 1}) == result


def test_counts_lists_every_outcome():
    tally = counts([TestResult("a", "passed", 0), TestResult("b", "xfailed", 0),
                    TestResult("c", "passed", 0)])
    assert tally == {"passed": 2, "failed": 0, "error": 0, "xfailed": 1, "xpassed": 0,
                     "skipped": 0}
