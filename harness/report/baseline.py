"""Compare a nightly run with an earlier one: regressions, fixes, new known failures.

Tests are matched by node id within paired runs.  Runs are paired by QEMU
binary path (the usual nightly: the same build tree, rebuilt), then by label
(QEMU version), and when each side has exactly one run left, with each other.

    before -> after                      category
    passed/xfailed -> failed/error       regression        (exit status 1)
    failed/error -> passed               fix
    xfailed -> passed or xpassed         fix               (QEMU gained the feature)
    anything else -> xfailed             new known failure
    absent/skipped -> failed/error/xpass new failure       (fails the run anyway)
    present -> absent/skipped            missing           (selection or skip changed)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.report.results import (
    BUDGET_SPENT,
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    XFAILED,
    XPASSED,
    TestResult,
)

REPORT_NAME = "report.json"


@dataclass(frozen=True)
class RunRef:
    """What pairing needs to know about one run of a report."""

    label: str
    qemu_binary: str | None


@dataclass(frozen=True)
class BaselineChange:
    nodeid: str
    run: str
    before: str | None
    after: str | None
    seed: str | None = None
    machine: str | None = None
    message: str = ""


@dataclass(frozen=True)
class CellChange:
    seed: str
    machine: str
    run: str
    before: str
    after: str


@dataclass(frozen=True)
class BaselineDiff:
    baseline: str                     # the baseline's directory
    baseline_started: str | None = None
    regressions: tuple[BaselineChange, ...] = ()
    fixes: tuple[BaselineChange, ...] = ()
    new_known_failures: tuple[BaselineChange, ...] = ()
    new_failures: tuple[BaselineChange, ...] = ()
    missing: tuple[BaselineChange, ...] = ()
    cells: tuple[CellChange, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """A previous report as far as the comparison needs it."""

    directory: Path
    started: str | None
    runs: tuple[RunRef, ...]
    tests: tuple[TestResult, ...]
    items: Mapping[str, Mapping[str, Mapping[str, str]]]
    pytest_args: tuple[str, ...]


def load_baseline(directory: Path) -> Baseline:
    """Read DIR/report.json; UserError when it is not a nightly report."""
    path = directory / REPORT_NAME
    try:
        data = json.loads(path.read_text())
        runs = tuple(RunRef(str(r["label"]), r.get("qemu_binary")) for r in data["runs"])
        tests = tuple(TestResult.from_dict(t) for t in data["tests"])
    except FileNotFoundError:
        raise UserError(f"baseline {directory} has no {REPORT_NAME}",
                        fix="pass the directory of an earlier `pci-harness nightly` run") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"baseline {path} is not a nightly report ({exc})",
                        fix="pass the directory of an earlier `pci-harness nightly` run") from None
    return Baseline(directory, data.get("started"), runs, tests, data.get("items") or {},
                    tuple(data.get("pytest_args") or ()))


def find_previous(reports_dir: Path, exclude: Path) -> Path | None:
    """The newest sibling run (by its recorded start time) that has a report.json."""
    candidates: list[tuple[str, Path]] = []
    if not reports_dir.is_dir():
        return None
    for child in reports_dir.iterdir():
        report = child / REPORT_NAME
        if child.resolve() == exclude.resolve() or not report.is_file():
            continue
        try:
            started = str(json.loads(report.read_text()).get("started") or "")
        except ValueError:
            continue
        candidates.append((started, child))
    return max(candidates)[1] if candidates else None


def pair_runs(current: Sequence[RunRef], previous: Sequence[RunRef]) -> dict[str, str]:
    """current label -> baseline label."""
    pairs: dict[str, str] = {}
    left = list(previous)
    for key in ("qemu_binary", "label"):
        for run in current:
            if run.label in pairs:
                continue
            match = next((p for p in left if getattr(p, key) and
                          getattr(p, key) == getattr(run, key)), None)
            if match is not None:
                pairs[run.label] = match.label
                left.remove(match)
    unpaired = [r for r in current if r.label not in pairs]
    if len(unpaired) == 1 and len(left) == 1:
        pairs[unpaired[0].label] = left[0].label
    return pairs


_BAD = (FAILED, ERROR)


def classify(before: str | None, after: str | None) -> str | None:
    """The category name of one test's change, None when nothing to report."""
    if after in _BAD:
        if before in (PASSED, XFAILED):
            return "regressions"
        return None if before in _BAD else "new_failures"
    if after == XPASSED:
        return "fixes" if before == XFAILED else (None if before == XPASSED else "new_failures")
    if after == XFAILED:
        return None if before == XFAILED else "new_known_failures"
    if after == PASSED:
        return "fixes" if before in (*_BAD, XFAILED, XPASSED) else None
    if after in (None, SKIPPED) and before not in (None, SKIPPED):
        return "missing"
    return None


#: The run label under which tests that run once per night (whichever QEMU's
#: suite carried them) are compared.
ONCE = "(once per night)"


def _once(tests: Sequence[TestResult], prefixes: tuple[str, ...]) -> dict[tuple[str, str],
                                                                        TestResult]:
    """(run, nodeid) -> result; a test under PREFIXES is keyed (ONCE, nodeid), so it
    is matched with itself whichever suite ran it on either night."""
    return {((ONCE if prefixes and t.nodeid.startswith(prefixes) else t.run), t.nodeid): t
            for t in tests}


def _budget_skip(result: TestResult | None) -> bool:
    return result is not None and result.outcome == SKIPPED and BUDGET_SPENT in result.message


def compare(current_runs: Sequence[RunRef], current: Sequence[TestResult],
            current_items: Mapping[str, Mapping[str, Mapping[str, str]]],
            baseline: Baseline, current_args: Sequence[str] = (),
            once_per_night: tuple[str, ...] = ()) -> BaselineDiff:
    """Tonight against BASELINE, test by test within paired runs.  Node ids under
    ONCE_PER_NIGHT are compared across runs (one suite runs them, not always the
    same); a test skipped because a budget ran out (BUDGET_SPENT) is not missing."""
    pairs = pair_runs(current_runs, baseline.runs)
    notes: list[str] = []
    for run in current_runs:
        if run.label not in pairs:
            notes.append(f"run {run.label} has no counterpart in the baseline: not compared")
        elif pairs[run.label] != run.label:
            notes.append(f"run {run.label} compared with baseline run {pairs[run.label]}")
    if tuple(current_args) != baseline.pytest_args:
        notes.append(f"pytest arguments differ: now {list(current_args)}, "
                     f"baseline {list(baseline.pytest_args)}")
    old = _once(baseline.tests, once_per_night)
    new = _once(current, once_per_night)
    found: dict[str, list[BaselineChange]] = {}
    compared = dict(pairs) | ({ONCE: ONCE} if once_per_night else {})
    for label, old_label in compared.items():
        nodeids = {n for (r, n) in new if r == label} | {n for (r, n) in old if r == old_label}
        for nodeid in sorted(nodeids):
            before, after = old.get((old_label, nodeid)), new.get((label, nodeid))
            category = classify(before.outcome if before else None,
                                after.outcome if after else None)
            if category is None or (category == "missing" and _budget_skip(after)):
                continue
            ref = after or before
            assert ref is not None
            found.setdefault(category, []).append(BaselineChange(
                nodeid, label, before.outcome if before else None,
                after.outcome if after else None, ref.seed, ref.machine,
                (after.message if after else "") or ""))
    cells = []
    for seed, machines in current_items.items():
        for machine, by_run in machines.items():
            for label, status in by_run.items():
                old_status = baseline.items.get(seed, {}).get(machine, {}).get(
                    pairs.get(label, ""))
                if old_status is not None and old_status != status:
                    cells.append(CellChange(seed, machine, label, old_status, status))
    return BaselineDiff(
        baseline=str(baseline.directory), baseline_started=baseline.started,
        regressions=tuple(found.get("regressions", ())), fixes=tuple(found.get("fixes", ())),
        new_known_failures=tuple(found.get("new_known_failures", ())),
        new_failures=tuple(found.get("new_failures", ())),
        missing=tuple(found.get("missing", ())), cells=tuple(cells), notes=tuple(notes))
