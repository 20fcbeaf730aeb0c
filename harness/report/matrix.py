"""The conformance matrix: seed item x machine kind x QEMU run -> status and counts.

A cell summarises every test of one seed item on one machine kind under one
QEMU binary twice: `items` keeps the worst outcome (report.json's
`items[seed][machine][qemu]`, what the baseline compares), `item_counts` how
many tests had each outcome ("6 pass · 1 known failure", what people read).
The worst outcome wins, so a cell never hides a failure behind a passing
sibling:

    fail > xpass > known-failure > pass > not-run

- fail           a test failed or errored
- xpass          a strict-xfail test passed: QEMU changed, the marker must go
- known-failure  tests xfailed (the known QEMU gap the seed item describes)
- pass           every test that ran passed
- not-run        no test of the item ran there (none exist, skipped, deselected)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from harness.report.results import ERROR, FAILED, PASSED, XFAILED, XPASSED, TestResult

PASS = "pass"
KNOWN = "known-failure"
FAIL = "fail"
XPASS = "xpass"
NOT_RUN = "not-run"
STATUSES = (PASS, KNOWN, FAIL, XPASS, NOT_RUN)
#: What every report (report.html, summary.md) writes where there is no test.
NO_TEST = "-"
#: Column name for seeded tests that do not say which machine they ran.
ANY_MACHINE = "any"

_RANK = {NOT_RUN: 0, PASS: 1, KNOWN: 2, XPASS: 3, FAIL: 4}
_STATUS_OF = {PASSED: PASS, XFAILED: KNOWN, XPASSED: XPASS, FAILED: FAIL, ERROR: FAIL}

#: items[seed][machine][run] = status
Items = dict[str, dict[str, dict[str, str]]]
#: item_counts[seed][machine][run] = {status: number of tests}, statuses seen only
ItemCounts = dict[str, dict[str, dict[str, dict[str, int]]]]


def cell_status(results: Iterable[TestResult]) -> str:
    """The worst status of the given tests (skipped tests count as not-run)."""
    worst = NOT_RUN
    for result in results:
        status = _STATUS_OF.get(result.outcome, NOT_RUN)
        if _RANK[status] > _RANK[worst]:
            worst = status
    return worst


def column_of(result: TestResult) -> str:
    return result.machine_kind or ANY_MACHINE


def machine_columns(tests: Iterable[TestResult], machines: Sequence[str]) -> list[str]:
    """The requested machine kinds in order, then any other kind a seeded test ran."""
    columns = list(machines)
    extra = sorted({column_of(t) for t in tests if t.seed} - set(columns))
    return columns + extra


def build_items(tests: Sequence[TestResult], seeds: Mapping[str, str],
                machines: Sequence[str], runs: Sequence[str]) -> Items:
    """Every seed item (tested or not) x machine column x run label."""
    columns = machine_columns(tests, machines)
    grouped: dict[tuple[str, str, str], list[TestResult]] = {}
    for test in tests:
        if test.seed:
            grouped.setdefault((test.seed, column_of(test), test.run), []).append(test)
    item_ids = list(seeds) + sorted({t.seed for t in tests if t.seed and t.seed not in seeds})
    return {seed: {machine: {run: cell_status(grouped.get((seed, machine, run), []))
                             for run in runs}
                   for machine in columns}
            for seed in item_ids}


def cell_tests(tests: Iterable[TestResult], seed: str, machine: str, run: str) -> list[TestResult]:
    return [t for t in tests if t.seed == seed and column_of(t) == machine and t.run == run]


def cell_counts(results: Iterable[TestResult]) -> dict[str, int]:
    """Tests per status, in STATUSES order, only the statuses that occur."""
    tally: dict[str, int] = {}
    for result in results:
        status = _STATUS_OF.get(result.outcome, NOT_RUN)
        tally[status] = tally.get(status, 0) + 1
    return {status: tally[status] for status in STATUSES if status in tally}


def build_item_counts(tests: Sequence[TestResult], items: Items) -> ItemCounts:
    """The counts behind every cell of `items` (same seeds, machine columns, runs)."""
    grouped: dict[tuple[str, str, str], list[TestResult]] = {}
    for test in tests:
        if test.seed:
            grouped.setdefault((test.seed, column_of(test), test.run), []).append(test)
    return {seed: {machine: {run: cell_counts(grouped.get((seed, machine, run), []))
                             for run in by_run}
                   for machine, by_run in by_machine.items()}
            for seed, by_machine in items.items()}


def count_words(counts: Mapping[str, int], words: Mapping[str, str]) -> str:
    """"6 pass · 1 known failure" from {"pass": 6, "known-failure": 1}; "" for none."""
    return " · ".join(f"{number} {words[status]}" for status, number in counts.items())


def short_nodeid(nodeid: str) -> tuple[str, str]:
    """("test_x.py::test_y", "[pc-1]") from "tests/pci/seed/test_x.py::test_y[pc-1]":
    the file's name and the test, then the parameters ("" when none)."""
    path, _, rest = nodeid.partition("::")
    name = path.rsplit("/", 1)[-1] + ("::" + rest if rest else "")
    base, bracket, params = name.partition("[")
    return base, (bracket + params if bracket else "")
