"""Per-test results: one record per test and run, derived from pytest's reports.

pytest reports a test in up to three phases (setup, call, teardown) and hides
xfail/xpass in `wasxfail` and a "[XPASS(strict)]" long representation.  This
module folds those phases into one outcome a QEMU developer reads directly:

- passed    the test passed
- failed    the test body failed (or a strict xfail passed unexpectedly: see xpassed)
- error     setup or teardown failed (a guest that never booted, a leaked QEMU)
- xfailed   a known failure: an xfail marker whose reason names the seed item
- xpassed   an xfail test passed: QEMU changed, the marker must go (fails the run)
- skipped   not run (neither good nor bad; shown as not-run in the matrix)

The records are plain frozen dataclasses so that the JSON written by the
collector, the matrix, the baseline comparison and the renderers share one
vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.report.figures import test_figures
from harness.report.switchpoints import test_switch_points

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
XFAILED = "xfailed"
XPASSED = "xpassed"
SKIPPED = "skipped"
OUTCOMES = (PASSED, FAILED, ERROR, XFAILED, XPASSED, SKIPPED)
#: Outcomes that make the nightly exit 1.
BAD_OUTCOMES = frozenset({FAILED, ERROR, XPASSED})
#: How a skip message starts when a time budget ran out before the test (the
#: nightly's exploration): it could run, tonight it did not get to; against a
#: baseline it is not "missing".
BUDGET_SPENT = "budget spent"

_STRICT_XPASS = "[XPASS(strict)]"
#: pytest-xdist puts "[gw0] linux -- Python 3.11.7 /path/python" above a worker's failure.
_XDIST_HEADER = re.compile(r"^\[gw\d+\] \S+ -- Python ")
_LONGREPR_LIMIT = 12000


class PhaseReport(Protocol):
    """What we read from a pytest TestReport/CollectReport (also works on fakes)."""

    when: str | None
    outcome: str
    duration: float
    user_properties: list[tuple[str, object]]
    longrepr: object

    @property
    def longreprtext(self) -> str: ...


@dataclass(frozen=True)
class TestResult:
    """One test in one pytest run (one QEMU binary)."""

    __test__ = False  # not a pytest test class

    nodeid: str
    outcome: str
    duration: float
    run: str = ""                       # the run's label (QEMU version, unique per report)
    machine: str | None = None          # machine type the test ran ("q35", "pc-q35-6.0")
    machine_kind: str | None = None     # "pc" / "q35": the matrix column
    qemu_version: str | None = None
    qemu_binary: str | None = None
    seed: str | None = None             # seed item id (marker `seed`)
    message: str = ""                   # one line: why it failed / the xfail reason
    longrepr: str = ""                  # pytest's failure text (truncated)
    xfail_reason: str | None = None
    known_gap: str | None = None        # the known gap this QEMU was expected to show
    artifacts: str | None = None        # artifact directory kept for a failure
    console_tail: Mapping[str, str] = field(default_factory=dict)  # guest name -> tail
    worker: str | None = None           # xdist gateway id ("gw0")
    host: str | None = None             # host name the worker ran on
    figures: Mapping[str, float] = field(default_factory=dict)  # record_figure(): name -> value
    cpu_s: float | None = None          # CPU of the worker and its reaped children (QEMU)
    switch_points: tuple[Mapping[str, Any], ...] = ()   # record_switch_points(): per hop

    @property
    def bad(self) -> bool:
        return self.outcome in BAD_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["console_tail"] = dict(self.console_tail)
        data["figures"] = dict(self.figures)
        data["switch_points"] = [dict(row) for row in self.switch_points]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestResult:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["console_tail"] = dict(values.get("console_tail") or {})
        values["figures"] = {str(k): float(v) for k, v in (values.get("figures") or {}).items()}
        values["switch_points"] = tuple(dict(r) for r in values.get("switch_points") or ()
                                        if isinstance(r, Mapping))
        return cls(**values)


#: Attribute the collector sets on each TestReport (machine, host, console tail).
#: A report attribute rather than user_properties: it survives pytest-xdist's
#: report serialisation but stays out of junit.xml.
REPORT_ATTRIBUTE = "pci_report"


def properties(reports: Iterable[PhaseReport]) -> dict[str, object]:
    """user_properties and collector annotations of every phase merged.

    Later phases win: the artifact path and the console tail come at teardown.
    """
    merged: dict[str, object] = {}
    for report in reports:
        for key, value in getattr(report, "user_properties", None) or ():
            merged[key] = value
        extra = getattr(report, REPORT_ATTRIBUTE, None)
        if isinstance(extra, dict):
            merged.update({k: v for k, v in extra.items() if v is not None})
    return merged


def _message(report: PhaseReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) if crash is not None else None
    if not text:
        text = report.longreprtext if not isinstance(report.longrepr, tuple) \
            else str(report.longrepr[2])
    lines = [line.strip() for line in str(text).splitlines()
             if line.strip() and not _XDIST_HEADER.match(line)]
    return lines[0][:300] if lines else ""


def _longrepr(report: PhaseReport) -> str:
    if isinstance(report.longrepr, tuple):  # skip: (path, line, reason)
        return str(report.longrepr[2])
    text = report.longreprtext
    if len(text) > _LONGREPR_LIMIT:
        text = "[... truncated ...]\n" + text[-_LONGREPR_LIMIT:]
    return text


def fold(reports: Sequence[PhaseReport]) -> tuple[str, str, str, str | None]:
    """(outcome, message, longrepr, xfail_reason) of one test from its phase reports."""
    by_when = {r.when: r for r in reports}
    crashed = [r for r in reports if r.when not in ("setup", "call", "teardown", "collect")
               and r.outcome == "failed"]
    if crashed:  # pytest-xdist's report for a worker that died mid-test (when="???")
        return FAILED, _message(crashed[0]), _longrepr(crashed[0]), None
    setup, call, teardown = by_when.get("setup"), by_when.get("call"), by_when.get("teardown")
    collect = by_when.get("collect")
    if collect is not None and collect.outcome == "failed":
        return ERROR, _message(collect), _longrepr(collect), None
    wasxfail = next((r.wasxfail for r in reports if hasattr(r, "wasxfail")), None)
    if setup is not None and setup.outcome == "failed":
        return ERROR, "setup: " + _message(setup), _longrepr(setup), None
    if setup is not None and setup.outcome == "skipped" and call is None:
        if wasxfail is not None:
            return XFAILED, str(wasxfail), _longrepr(setup), str(wasxfail)
        return SKIPPED, _message(setup), _longrepr(setup), None
    outcome, message, text, reason = SKIPPED, "not run", "", None
    if call is not None:
        strict_xpass = next((line for line in call.longreprtext.splitlines()
                             if line.startswith(_STRICT_XPASS)), None)
        if call.outcome == "failed" and strict_xpass is not None:
            reason = strict_xpass[len(_STRICT_XPASS):].strip()
            outcome, message, text = XPASSED, f"unexpected pass of a strict xfail: {reason}", ""
        elif call.outcome == "failed":
            outcome, message, text = FAILED, _message(call), _longrepr(call)
        elif call.outcome == "skipped" and wasxfail is not None:
            reason = str(wasxfail)
            outcome, message, text = XFAILED, reason, _longrepr(call)
        elif call.outcome == "skipped":
            outcome, message, text = SKIPPED, _message(call), _longrepr(call)
        elif wasxfail is not None:  # non-strict xfail that passed
            reason = str(wasxfail)
            outcome, message, text = XPASSED, f"unexpected pass of an xfail: {reason}", ""
        else:
            outcome, message, text = PASSED, "", ""
    if teardown is not None and teardown.outcome == "failed":
        detail = "teardown: " + _message(teardown)
        if outcome in (PASSED, XFAILED, SKIPPED):
            return ERROR, detail, _longrepr(teardown), reason
        text = text + "\n\n--- teardown ---\n" + _longrepr(teardown)
    return outcome, message, text, reason


def result_from_reports(nodeid: str, reports: Sequence[PhaseReport], *, run: str = "",
                        qemu_version: str | None = None, qemu_binary: str | None = None,
                        worker: str | None = None) -> TestResult:
    """Fold the phase reports of one test into a TestResult."""
    outcome, message, text, reason = fold(reports)
    props = properties(reports)
    machine = props.get("machine")
    kind = props.get("machine_kind")
    tail = props.get("console_tail")
    return TestResult(
        nodeid=nodeid, outcome=outcome,
        duration=round(sum(float(getattr(r, "duration", 0.0) or 0.0) for r in reports), 3),
        run=run, machine=str(machine) if machine else None,
        machine_kind=str(kind) if kind else None,
        qemu_version=qemu_version, qemu_binary=qemu_binary,
        seed=str(props["seed"]) if props.get("seed") else None,
        message=message, longrepr=text, xfail_reason=reason,
        known_gap=str(props["known_gap"]) if props.get("known_gap") else None,
        artifacts=str(props["artifacts"]) if props.get("artifacts") else None,
        console_tail={str(k): str(v) for k, v in dict(tail).items()}
        if isinstance(tail, (dict, list, tuple)) and tail else {},
        worker=worker, host=str(props["host"]) if props.get("host") else None,
        figures=test_figures(props), switch_points=test_switch_points(props),
        cpu_s=float(cpu) if isinstance(cpu := props.get("cpu_s"), (int, float)) else None)


def counts(results: Iterable[TestResult]) -> dict[str, int]:
    """Number of tests per outcome (every outcome present, zeros included)."""
    tally = {outcome: 0 for outcome in OUTCOMES}
    for result in results:
        tally[result.outcome] = tally.get(result.outcome, 0) + 1
    return tally
