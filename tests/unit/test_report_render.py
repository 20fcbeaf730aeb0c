"""The verdict, summary.md, report.html and junit.xml merge from a report value (no QEMU)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from harness.report.baseline import BaselineChange, BaselineDiff, CellChange
from harness.report.document import HuntResult, NightlyReport, RunInfo
from harness.report.html import render_html
from harness.report.junit import merge_junit
from harness.report.markdown import render_markdown
from harness.report.matrix import build_items
from harness.report.results import TestResult

SEEDS = {"master-abort": "PCI master-abort is not emulated correctly",
         "q35-hotplug": "Hotplug for Q35"}


def make_report(tmp_path, outcomes, *, baseline=None, hunts=(), problems=()):
    tests = []
    for i, (outcome, seed, kind) in enumerate(outcomes):
        artifacts = None
        if outcome in ("failed", "error"):
            artifacts = tmp_path / "runs" / "7.2.22" / "artifacts" / f"t{i}"
            (artifacts / "guest").mkdir(parents=True)
            (artifacts / "guest" / "console.log").write_text("boot\n")
            (artifacts / "guest" / "reproduce.sh").write_text("#!/bin/sh\n")
        tests.append(TestResult(
            f"tests/pci/test_x.py::test_{i}[{kind}]", outcome, 2.0 + i, run="7.2.22",
            machine=kind, machine_kind=kind, seed=seed,
            message=f"<b>why {i}</b>" if outcome != "passed" else "",
            xfail_reason="master-abort: reads return 0" if outcome == "xfailed" else None,
            artifacts=str(artifacts) if artifacts else None,
            console_tail={"guest": "BUG: <oops> & panic"} if artifacts else {}))
    run = RunInfo("7.2.22", "/usr/bin/qemu-system-x86_64", "7.2.22", "tcg: TCG as requested",
                  1 if any(t.bad for t in tests) else 0, 61.0, "runs/7.2.22")
    return NightlyReport(
        started="2026-11-24T02:00:00+00:00", finished="2026-11-24T02:01:01+00:00",
        duration_s=61.0, host="ci", command=("pci-harness", "nightly"), pytest_args=(),
        machines=("pc", "q35"), seeds=SEEDS, runs=(run,), tests=tuple(tests),
        items=build_items(tests, SEEDS, ["pc", "q35"], ["7.2.22"]), baseline=baseline,
        hunts=tuple(hunts), problems=tuple(problems))


@pytest.mark.parametrize("outcomes, status", [
    ([("passed", "q35-hotplug", "q35"), ("xfailed", "master-abort", "pc")], 0),
    ([("passed", "q35-hotplug", "q35"), ("skipped", None, "q35")], 0),
    ([("passed", "q35-hotplug", "q35"), ("xpassed", "master-abort", "pc")], 1),
    ([("failed", "q35-hotplug", "q35")], 1),
    ([("error", None, "q35")], 1),
])
def test_verdict_from_outcomes(tmp_path, outcomes, status):
    assert make_report(tmp_path, outcomes).verdict()[0] == status


def test_verdict_fails_on_regression_problem_and_hunt(tmp_path):
    ok = [("passed", "q35-hotplug", "q35")]
    regressed = BaselineDiff("/old", regressions=(BaselineChange("n", "7.2.22", "passed", "failed"),))
    assert make_report(tmp_path, ok, baseline=regressed).verdict() == \
        (1, ["1 regressed since the baseline"])
    assert make_report(tmp_path, ok, problems=["no tests were collected"]).verdict()[0] == 1
    crash = HuntResult("7.2.22", ("pingpong",), 1, 60.0, {"ok": False, "failures": ["crash"]})
    assert make_report(tmp_path, ok, hunts=[crash]).verdict()[0] == 1
    quiet = HuntResult("7.2.22", ("pingpong",), 0, 60.0, {"ok": True, "failures": []})
    assert make_report(tmp_path, ok, hunts=[quiet]).verdict()[0] == 0


def test_summary_matrix_has_every_item_and_the_changes(tmp_path):
    diff = BaselineDiff("/reports/old", regressions=(
        BaselineChange("tests/pci/test_x.py::test_0[q35]", "7.2.22", "passed", "failed", "q35-hotplug",
               "q35", "why 0"),), cells=(CellChange("q35-hotplug", "q35", "7.2.22", "pass", "fail"),))
    text = render_markdown(make_report(
        tmp_path, [("failed", "q35-hotplug", "q35"), ("xfailed", "master-abort", "pc")],
        baseline=diff))
    table = [line for line in _matrix_section(text).splitlines() if line.startswith("| ")]
    assert table == ["| Seed item | QEMU 7.2.22 pc | QEMU 7.2.22 q35 |",
                     "| master-abort | 1 known failure | - |",
                     "| q35-hotplug | - | 1 **FAIL** |"]
    regressions = text.split("### Regressions (1)")[1]
    assert "`tests/pci/test_x.py::test_0[q35]` (q35-hotplug, q35, QEMU 7.2.22): " \
           "passed -> failed: why 0" in regressions
    assert "matrix: q35-hotplug / q35 / QEMU 7.2.22: pass -> fail" in text
    assert "master-abort: reads return 0" in text.split("## Known failures")[1]


def _matrix_section(markdown: str) -> str:
    return markdown.split("## Seed items")[1].split("\n## ")[0]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.cells, self.text = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [attrs[k] for k in ("href", "src") if k in attrs]
        if tag == "td" and "s" in (attrs.get("class") or "").split():
            self._cell = attrs["class"].split()[1]

    def handle_data(self, data):
        self.text.append(data)
        if self._cell:
            self.cells.append((self._cell, data))
            self._cell = None


def test_html_is_self_contained_and_escapes_everything(tmp_path):
    report = make_report(tmp_path, [("failed", "q35-hotplug", "q35"),
                                    ("xfailed", "master-abort", "pc")])
    page = _Page()
    page.feed(render_html(report, tmp_path))
    assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    # only in-page anchors and relative links to the artifacts: nothing fetched from elsewhere
    assert all(u.startswith(("#", "runs/7.2.22/artifacts/t0")) for u in page.urls), \
        page.urls
    assert "runs/7.2.22/artifacts/t0/guest/reproduce.sh" in page.urls
    assert ("known-failure", "1 known failure") in page.cells and ("fail", "1 FAIL") in page.cells
    assert page.cells.count(("not-run", "-")) == 2, "a cell without a test: '-' as in summary.md"
    text = "".join(page.text)
    assert "BUG: <oops> & panic" in text and "<b>why 0</b>" in text  # shown as text, not markup
    matrix_at = text.index("Seed items")
    assert matrix_at < text.index("Failures (1)") < text.index("Timings")


def test_junit_merge_keeps_each_run_as_a_suite(tmp_path):
    for label, cases in (("7.2.22", 2), ("9.1.0", 3)):
        (tmp_path / label).mkdir()
        body = "".join(f'<testcase classname="t" name="c{i}" time="1.5"/>' for i in range(cases))
        (tmp_path / label / "junit.xml").write_text(
            f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{cases}" '
            f'failures="1" errors="0" skipped="0" time="3.0">{body}</testsuite></testsuites>')
    merge_junit([("7.2.22", tmp_path / "7.2.22" / "junit.xml"),
                 ("9.1.0", tmp_path / "9.1.0" / "junit.xml"),
                 ("missing", tmp_path / "nope.xml")], tmp_path / "junit.xml")
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert [s.get("name") for s in root.iter("testsuite")] == \
        ["pci-harness qemu 7.2.22", "pci-harness qemu 9.1.0"]
    assert (root.get("tests"), root.get("failures"), len(list(root.iter("testcase")))) == \
        ("5", "2", 5)
    assert re.fullmatch(r"6\.0+", root.get("time") or "")


def test_hunt_is_summarised_from_the_verbs_json(tmp_path):
    verdict = {"ok": False, "hops": 37, "seed": 4242, "hop_s": {"p50": 0.2, "p95": 0.4},
               "downtime_ms": {"p50": 30.0, "max": 80.0},
               "failures": ["hop 37: destination failed to load"],
               "failure": {"hop": 37, "kind": "load", "artifacts": "/tmp/pp"},
               "per_hop": [{"hop": i} for i in range(37)]}
    crash = HuntResult("7.2.22", ("pci-harness", "pingpong"), 1, 300.0, verdict)
    report = make_report(tmp_path, [("passed", "q35-hotplug", "q35")], hunts=[crash])
    hunt_part = render_markdown(report).split("## Ping-pong crash hunt")[1]
    line = next(x for x in hunt_part.splitlines() if x.startswith("- QEMU 7.2.22: "))
    assert line == ("- QEMU 7.2.22: FAILED in 5m00s: hops 37, seed 4242, hop p50 0.2 s p95 0.4 s, "
                    "downtime p50 30.0 ms max 80.0 ms, failure: hop 37: destination failed to "
                    "load, artifacts /tmp/pp")
    page = render_html(report, tmp_path)
    assert "destination failed to load" in page and '"hop": 36' not in page


def test_matrix_marks_changed_cells_but_not_new_coverage(tmp_path):
    diff = BaselineDiff("/old", cells=(CellChange("q35-hotplug", "q35", "7.2.22", "pass", "fail"),
                                       CellChange("master-abort", "pc", "7.2.22", "not-run",
                                                  "known-failure")))
    page = render_html(make_report(tmp_path, [("failed", "q35-hotplug", "q35"),
                                              ("xfailed", "master-abort", "pc")], baseline=diff),
                       tmp_path)
    matrix = page.split("<table class='matrix'>")[1].split("</table>")[0]
    assert matrix.count("class='was'") == 1 and "was pass" in matrix


def two_qemu_report(tmp_path):
    """seed master-abort on q35: 6 pass + 1 known failure on 7.2.22, 7 pass on 10.0.2 (the
    gap fixed there); q35-hotplug on pc: a pass and a failure on 10.0.2 only."""
    tests = [TestResult(f"t::test_{i}[q35]", "passed", 1.0, run=run, machine="q35",
                        machine_kind="q35", seed="master-abort")
             for run in ("7.2.22", "10.0.2") for i in range(6)]
    tests += [TestResult("t::test_gap[q35]", "xfailed", 1.0, run="7.2.22", machine="q35",
                         machine_kind="q35", seed="master-abort",
                         xfail_reason="master-abort: reads return 0"),
              TestResult("t::test_gap[q35]", "passed", 1.0, run="10.0.2", machine="q35",
                         machine_kind="q35", seed="master-abort"),
              TestResult("t::test_hp[pc]", "passed", 1.0, run="10.0.2", machine="pc",
                         machine_kind="pc", seed="q35-hotplug"),
              TestResult("t::test_hp2[pc]", "failed", 1.0, run="10.0.2", machine="pc",
                         machine_kind="pc", seed="q35-hotplug", message="boom"),
              TestResult("t::test_skip[pc]", "skipped", 0.0, run="10.0.2", machine="pc",
                         machine_kind="pc", seed="q35-hotplug")]
    runs = tuple(RunInfo(label, f"/opt/{label}/qemu", label, "tcg", 0, 10.0, f"runs/{label}")
                 for label in ("7.2.22", "10.0.2"))
    return NightlyReport(
        started="2026-11-24T02:00:00+00:00", finished="2026-11-24T02:01:01+00:00",
        duration_s=61.0, host="ci", command=("pci-harness", "nightly"), pytest_args=(),
        machines=("pc", "q35"), seeds=SEEDS, runs=runs, tests=tuple(tests),
        items=build_items(tests, SEEDS, ["pc", "q35"], ["7.2.22", "10.0.2"]))


def test_cells_count_each_outcome_per_qemu(tmp_path):
    report = two_qemu_report(tmp_path)
    data = report.to_dict()
    # items keeps the worst outcome (what the baseline reads); item_counts the counts
    assert data["items"]["master-abort"]["q35"] == {"7.2.22": "known-failure", "10.0.2": "pass"}
    assert data["item_counts"]["master-abort"]["q35"] == {
        "7.2.22": {"pass": 6, "known-failure": 1}, "10.0.2": {"pass": 7}}
    assert data["item_counts"]["q35-hotplug"]["pc"] == {
        "7.2.22": {}, "10.0.2": {"pass": 1, "fail": 1, "not-run": 1}}
    table = [line for line in _matrix_section(render_markdown(report)).splitlines()
             if line.startswith("| ")]
    assert table == [
        "| Seed item | QEMU 7.2.22 pc | QEMU 7.2.22 q35 | QEMU 10.0.2 pc | QEMU 10.0.2 q35 |",
        "| master-abort | - | 6 pass · 1 known failure | - | 7 pass |",
        "| q35-hotplug | - | - | 1 pass · 1 **FAIL** · 1 not run | - |"]
    page = _Page()
    page.feed(render_html(report, tmp_path))
    # The same symbol as summary.md where there is no test; "not run" only counts skips.
    assert page.cells == [("not-run", "-"), ("known-failure", "6 pass · 1 known failure"),
                          ("not-run", "-"), ("pass", "7 pass"),
                          ("not-run", "-"), ("not-run", "-"),
                          ("fail", "1 pass · 1 FAIL · 1 not run"), ("not-run", "-")]


class _Rows(HTMLParser):
    """Rows of the tables under one h2, as (cell text, title) lists."""

    def __init__(self, heading: str):
        super().__init__()
        self.heading, self.rows, self._in, self._h2 = heading, [], False, False
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._h2, self._in = True, False
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th") and self.rows:
            self._cell = ["", dict(attrs).get("title")]
            self.rows[-1].append(self._cell)
        elif self._in and tag == "span" and self._cell is not None and dict(attrs).get("title"):
            self._cell[1] = dict(attrs)["title"]

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = False

    def handle_data(self, data):
        if self._h2:
            self._in = data.startswith(self.heading)
        elif self._cell is not None:
            self._cell[0] += data.strip("\n")


def _gap_report(tmp_path, version):
    """One known failure of master-abort-not-emulated (measured on 7.2.22 and
    10.0.2 only) on QEMU `version`."""
    test = TestResult("tests/pci/seed/test_master_abort.py::test_unclaimed_reads_return_all_"
                      "ones_and_set_master_abort[q35-behind-a-pcie-pci-bridge]", "xfailed", 3.0,
                      run=version, machine="q35", machine_kind="q35", qemu_version=version,
                      seed="master-abort", known_gap="master-abort-not-emulated",
                      xfail_reason="master-abort: QEMU returns 0 for unclaimed memory reads")
    run = RunInfo(version, "/q", version, "tcg", 0, 5.0, f"runs/{version}")
    return NightlyReport(
        started="2026-11-24T02:00:00+00:00", finished="2026-11-24T02:01:01+00:00",
        duration_s=5.0, host="ci", command=("pci-harness", "nightly"), pytest_args=(),
        machines=("q35",), seeds=SEEDS, runs=(run,), tests=(test,),
        items=build_items([test], SEEDS, ["q35"], [version]))


@pytest.mark.parametrize("version, kind", [("10.0.2", "measured"), ("9.1.0", "inferred")])
def test_known_failures_table_shortens_the_id_and_says_measured_or_inferred(tmp_path, version,
                                                                          kind):
    report = _gap_report(tmp_path, version)
    page = render_html(report, tmp_path)
    known = _Rows("Known failures")
    known.feed(page)
    header, row = known.rows
    assert [c[0] for c in header] == ["Test", "QEMU", "Machine", "Evidence", "Reason"]
    test, evidence = row[0], row[3]
    assert test == [("test_master_abort.py::test_unclaimed_reads_return_all_ones_and_set_master_"
                    "abort[q35-behind-a-pcie-pci-bridge]"), report.tests[0].nodeid], \
        f"file::test shown, the full id on hover: {test}"
    assert evidence[0] == kind, evidence
    assert "<colgroup><col style='width:27%'>" in page and "table.known{table-layout:fixed;width:100%}" \
        in page, "the reason column takes the rest of a fixed-width table"
    gaps = _Rows("Known gaps")
    gaps.feed(page)
    cells = next(r for r in gaps.rows if r[0][0].startswith("master-abort-not-emulated"))
    assert cells[2][0] == "7.2.22 fails (pc, q35); 10.0.2 fails (pc, q35)", cells
    assert cells[3][0] == f"holds ({kind})", cells
    summary = render_markdown(report)
    assert f"(QEMU {version}, {kind}): master-abort:" in summary, summary
    assert f"| master-abort-not-emulated | QEMU 7.2 and later | 7.2.22 fails (pc, q35); " \
           f"10.0.2 fails (pc, q35) | holds ({kind}) |" in summary, summary


def test_a_development_build_run_lists_the_facts_inferred_for_it(tmp_path):
    report = _gap_report(tmp_path, "8.1.50")
    data = report.to_dict()
    notes = data["runs"][0]["inferred_facts"]
    assert [n.split(":")[0] for n in notes] == ["file-migration-uri"], notes
    assert notes[0] in render_html(report, tmp_path).replace("&#x27;", "'")
    assert f"  - inferred: {notes[0]}" in render_markdown(report)
    assert _gap_report(tmp_path, "8.1.2").to_dict()["runs"][0]["inferred_facts"] == []
