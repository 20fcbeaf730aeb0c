"""The known-gap table (harness.qemu.known) as strict xfails, per QEMU under test.

A test names its gap with `@pytest.mark.known_gap("<gap id>")`.  At
collection, with the version of the QEMU the run uses, `mark_known_failures`
gives each such test:

- inside the gap's range: `xfail(strict=True, reason=gap.reason)`, so the known
  failure is expected and a pass fails the run loudly (XPASS);
- outside it: nothing, a plain test, plus a note that a failure report shows
  ("not the known gap on this QEMU: it holds for QEMU before 10.0").

When such a test fails, `judge` checks the exception against the gap's
signature (harness/qemu/signature.py: exception class, failure kind, message
pattern): only that failure is the known failure.  Any other (a killed QEMU, a
failed precondition, a harness error, a setup error) is a plain FAIL whose
message starts "failed differently from known gap <id>: expected ..., got ...".

The reason and the signature come from the table only: tests never repeat them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from harness.errors import UserError
from harness.qemu.facts import Version, parse_version
from harness.qemu.gap import KnownGap
from harness.qemu.known import KNOWN_GAPS

MARKER = "known_gap"
#: user_properties key: the gap this run expects the test to show (inside the range).
EXPECTED = "known_gap"
#: user_properties key: a gap the test is tied to that this QEMU is outside of.
OUTSIDE = "known_gap_outside"


@dataclass(frozen=True)
class Decision:
    """What the plugin did with one known_gap marker of one test."""

    nodeid: str
    gap: KnownGap
    holds: bool


def gap_by_id(gap_id: object) -> KnownGap:
    gap = next((g for g in KNOWN_GAPS if g.id == gap_id), None)
    if gap is None:
        raise UserError(f"unknown known gap {gap_id!r}",
                        fix="use one of the ids in harness/qemu/known.py: "
                            + ", ".join(g.id for g in KNOWN_GAPS))
    return gap


def _seed_of(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("seed")
    return str(mark.args[0]) if mark is not None and mark.args else None


def decide(item: pytest.Item, qemu_version: Version,
           machine_of: Callable[[pytest.Item], str | None],
           firmware: tuple[str, str | None] | None = None) -> list[Decision]:
    """The known_gap markers of `item` judged for QEMU `qemu_version`.

    `machine_of` gives the versioned machine type the test runs (None when the
    test does not say at collection); it is asked only for gaps that depend on
    the machine.  FIRMWARE ((family, version) of --firmware) decides the gaps
    keyed by firmware too.  A marker that names no gap, or a gap of another seed item than
    the test's, is a UserError naming the test.
    """
    decisions: list[Decision] = []
    for mark in item.iter_markers(MARKER):
        try:
            if len(mark.args) != 1 or mark.kwargs:
                raise UserError(f"known_gap takes one gap id, got {mark.args!r} {mark.kwargs!r}",
                                fix='write @pytest.mark.known_gap("<gap id>"); how the gap '
                                    "fails is its signature in harness/qemu/known.py")
            gap = gap_by_id(mark.args[0])
            seed = _seed_of(item)
            if seed != gap.seed:
                raise UserError(f"known gap {gap.id} belongs to seed item {gap.seed!r}, the "
                                f"test is marked seed({seed!r})",
                                fix=f'mark the test @pytest.mark.seed("{gap.seed}") or name '
                                    "a gap of its own seed item")
            machine = machine_of(item) if gap.machines or gap.compat_property else None
            holds = gap.holds(qemu_version, machine, firmware)
        except UserError as exc:
            raise UserError(f"{item.nodeid}: {exc.message}", fix=exc.fix) from None
        decisions.append(Decision(item.nodeid, gap, holds))
    return decisions


def apply(item: pytest.Item, decisions: list[Decision], qemu_version: str) -> None:
    """Turn the decisions into markers and the notes the reports read."""
    for decision in decisions:
        gap = decision.gap
        if decision.holds:
            item.add_marker(pytest.mark.xfail(strict=True, reason=gap.reason))
            item.user_properties.append((EXPECTED, gap.id))
        else:
            item.user_properties.append((OUTSIDE, (
                f"known gap {gap.id} ({gap.reason}) holds for {gap.scope()}; this QEMU "
                f"{qemu_version} is outside that range, so a failure here is "
                "not that known gap (if it is, widen the range in harness/qemu/known.py "
                "with the measurement)")))


def mark_known_failures(items: list[pytest.Item], qemu_version: str,
                        machine_of: Callable[[pytest.Item], str | None],
                        firmware: tuple[str, str | None] | None = None) -> list[Decision]:
    """Mark every item that carries known_gap for QEMU `qemu_version` ("10.0.2");
    the decisions made."""
    made: list[Decision] = []
    version = parse_version(qemu_version)
    for item in items:
        decisions = decide(item, version, machine_of, firmware)
        apply(item, decisions, qemu_version)
        made += decisions
    return made


#: The first words of a known-gap test's failure that another signature made plain.
DIFFERENTLY = "failed differently from known gap"


def judge(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Turn an expected failure whose exception does not carry the signature of any
    gap the test expects into a plain failure (in place), its message first."""
    if call.excinfo is None or not report.skipped or not hasattr(report, "wasxfail"):
        return
    gaps = [gap_by_id(value) for key, value in item.user_properties if key == EXPECTED]
    if not gaps:
        return   # an xfail of the test's own, not a known gap
    exc = call.excinfo.value
    mismatches = [(gap, gap.signature.mismatch(exc)) for gap in gaps]
    if any(problem is None for _, problem in mismatches):
        return
    head = "\n".join(f"{DIFFERENTLY} {gap.id}: {problem}" for gap, problem in mismatches)
    report.outcome = "failed"
    del report.wasxfail
    report.longrepr = f"{head}\n\n{report.longreprtext}"
