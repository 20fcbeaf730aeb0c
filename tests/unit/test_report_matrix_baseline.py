"""The seed-item matrix and the baseline comparison (no QEMU)."""

from __future__ import annotations

import itertools
import json

import pytest

from harness.errors import UserError
from harness.report.baseline import (
    Baseline,
    RunRef,
    classify,
    compare,
    find_previous,
    load_baseline,
    pair_runs,
)
from harness.report.matrix import build_items, cell_status
from harness.report.results import TestResult

RANKED = ["not-run", "pass", "known-failure", "xpass", "fail"]  # worst last
OUTCOME_STATUS = {"skipped": "not-run", "passed": "pass", "xfailed": "known-failure",
                  "xpassed": "xpass", "failed": "fail", "error": "fail"}


def t(nodeid, outcome, seed=None, kind="q35", run="7.2.22"):
    return TestResult(nodeid, outcome, 1.0, run=run, machine=kind, machine_kind=kind, seed=seed)


@pytest.mark.parametrize("a, b", list(itertools.combinations(OUTCOME_STATUS, 2)))
def test_the_worse_outcome_wins_a_cell(a, b):
    worse = max(OUTCOME_STATUS[a], OUTCOME_STATUS[b], key=RANKED.index)
    assert cell_status([t("x", a), t("y", b)]) == worse
    assert cell_status([t("y", b), t("x", a)]) == worse


def test_items_cover_every_seed_machine_and_run():
    tests = [t("a[pc]", "passed", "s1", "pc"), t("a[q35]", "failed", "s1", "q35"),
             t("b", "xfailed", "s2", "q35", run="9.1.0"), t("c", "passed", "s3", None),
             t("d", "failed", None, "pc")]
    items = build_items(tests, {"s1": "one", "s2": "two", "s9": "untested"}, ["pc", "q35"],
                        ["7.2.22", "9.1.0"])
    assert items == {
        "s1": {"pc": {"7.2.22": "pass", "9.1.0": "not-run"},
               "q35": {"7.2.22": "fail", "9.1.0": "not-run"},
               "any": {"7.2.22": "not-run", "9.1.0": "not-run"}},
        "s2": {"pc": {"7.2.22": "not-run", "9.1.0": "not-run"},
               "q35": {"7.2.22": "not-run", "9.1.0": "known-failure"},
               "any": {"7.2.22": "not-run", "9.1.0": "not-run"}},
        "s9": {m: {"7.2.22": "not-run", "9.1.0": "not-run"} for m in ("pc", "q35", "any")},
        # a seed id the table does not know still gets a row (never silently dropped)
        "s3": {"pc": {"7.2.22": "not-run", "9.1.0": "not-run"},
               "q35": {"7.2.22": "not-run", "9.1.0": "not-run"},
               "any": {"7.2.22": "pass", "9.1.0": "not-run"}},
    }


@pytest.mark.parametrize("before, after, category", [
    ("passed", "failed", "regressions"), ("passed", "error", "regressions"),
    ("xfailed", "failed", "regressions"), ("failed", "failed", None),
    (None, "failed", "new_failures"), ("skipped", "error", "new_failures"),
    ("failed", "passed", "fixes"), ("xfailed", "passed", "fixes"),
    ("xfailed", "xpassed", "fixes"), ("passed", "xpassed", "new_failures"),
    ("passed", "xfailed", "new_known_failures"), (None, "xfailed", "new_known_failures"),
    ("xfailed", "xfailed", None), ("passed", "passed", None), (None, "passed", None),
    ("passed", None, "missing"), ("xfailed", "skipped", "missing"), ("skipped", None, None),
])
def test_classify(before, after, category):
    assert classify(before, after) == category


def test_runs_pair_by_binary_then_label_then_the_last_one_left():
    now = [RunRef("9.2.0", "/build/qemu"), RunRef("7.2.22", "/usr/bin/qemu"),
           RunRef("8.0.0", "/opt/a")]
    before = [RunRef("7.2.22", "/other/qemu"), RunRef("9.1.50", "/build/qemu"),
              RunRef("6.2.0", "/opt/b")]
    assert pair_runs(now, before) == {"9.2.0": "9.1.50", "7.2.22": "7.2.22", "8.0.0": "6.2.0"}


def _baseline(tmp_path, tests, items, args=()):
    return Baseline(tmp_path, "2026-01-01T00:00:00+00:00", (RunRef("9.1.50", "/b/qemu"),),
                    tuple(tests), items, tuple(args))


def test_compare_reports_each_category_and_matrix_cell(tmp_path):
    old = [t("ok", "passed", "s1", run="9.1.50"), t("gap", "xfailed", "s2", run="9.1.50"),
           t("flaky", "failed", run="9.1.50"), t("gone", "passed", run="9.1.50")]
    new = [t("ok", "failed", "s1", run="9.2.0"), t("gap", "xpassed", "s2", run="9.2.0"),
           t("flaky", "passed", run="9.2.0"), t("fresh", "xfailed", run="9.2.0")]
    old_items = {"s1": {"q35": {"9.1.50": "pass"}}, "s2": {"q35": {"9.1.50": "known-failure"}}}
    new_items = {"s1": {"q35": {"9.2.0": "fail"}}, "s2": {"q35": {"9.2.0": "xpass"}}}
    diff = compare([RunRef("9.2.0", "/b/qemu")], new, new_items,
                   _baseline(tmp_path, old, old_items, ["-k", "x"]), ["-k", "y"])
    assert [(c.nodeid, c.before, c.after) for c in diff.regressions] == [("ok", "passed", "failed")]
    assert sorted((c.nodeid, c.before, c.after) for c in diff.fixes) == \
        [("flaky", "failed", "passed"), ("gap", "xfailed", "xpassed")]
    assert [(c.nodeid, c.before) for c in diff.new_known_failures] == [("fresh", None)]
    assert [(c.nodeid, c.after) for c in diff.missing] == [("gone", None)]
    assert [(c.seed, c.before, c.after) for c in diff.cells] == \
        [("s1", "pass", "fail"), ("s2", "known-failure", "xpass")]
    assert any("pytest arguments differ" in n for n in diff.notes), diff.notes
    assert any("compared with baseline run 9.1.50" in n for n in diff.notes), diff.notes


def test_find_previous_takes_the_newest_other_run(tmp_path):
    for name, started in [("a", "2026-01-01T01:00:00+00:00"), ("b", "2026-01-03T01:00:00+00:00"),
                          ("c", "2026-01-02T01:00:00+00:00")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({"started": started}))
    (tmp_path / "half-written").mkdir()
    (tmp_path / "current").mkdir()
    assert find_previous(tmp_path, tmp_path / "current") == tmp_path / "b"
    assert find_previous(tmp_path, tmp_path / "b") == tmp_path / "c"
    assert find_previous(tmp_path / "nowhere", tmp_path / "current") is None


def test_load_baseline_refuses_what_is_not_a_report(tmp_path):
    with pytest.raises(UserError, match="has no report.json"):
        load_baseline(tmp_path)
    (tmp_path / "report.json").write_text('{"tests": []}')
    with pytest.raises(UserError, match="is not a nightly report"):
        load_baseline(tmp_path)


def test_once_per_night_tests_match_across_runs_and_budget_skips_are_not_missing(tmp_path):
    """Unit tests ran in 10.0.2's suite last night and in 7.2.22's tonight: the
    same tests, not 'missing' from one run and new in the other.  An exploration
    example the budget left out tonight is not missing either; one skipped for
    another reason is."""
    runs = [RunRef("7.2.22", "/q7"), RunRef("10.0.2", "/q10")]
    old = [t("tests/unit/test_a.py::x", "passed", run="10.0.2"),
           t("tests/unit/test_a.py::y", "passed", run="10.0.2"),
           t("explore::ex3", "passed", run="7.2.22"), t("other", "passed", run="7.2.22")]
    new = [t("tests/unit/test_a.py::x", "passed", run="7.2.22"),
           t("tests/unit/test_a.py::y", "failed", run="7.2.22"),
           TestResult("explore::ex3", "skipped", 0.0, run="7.2.22",
                      message="Skipped: budget spent: the exploration budget ran out"),
           TestResult("other", "skipped", 0.0, run="7.2.22", message="Skipped: no disk")]
    baseline = Baseline(tmp_path, "2026-01-01T00:00:00+00:00", tuple(runs), tuple(old), {}, ())
    diff = compare(runs, new, {}, baseline, [], ("tests/unit/",))
    assert [(c.nodeid, c.before, c.after) for c in diff.regressions] == \
        [("tests/unit/test_a.py::y", "passed", "failed")], diff.regressions
    assert [c.nodeid for c in diff.missing] == ["other"], diff.missing
    # Without the once-per-night prefixes the unit tests are missing from 10.0.2.
    plain = compare(runs, new, {}, baseline, [])
    assert {c.nodeid for c in plain.missing} >= {"tests/unit/test_a.py::x"}, plain.missing
