"""report.html: one self-contained page a QEMU developer reads in a minute.

Top: the verdict and the seed-item x machine x QEMU matrix (colour plus a
word, so it survives printing and colour blindness).  Then what changed since
the baseline, the failures with their message, console tail and links to the
artifacts, the known failures, and the timings.  No scripts, fonts or images
from elsewhere: the page opens from a mail attachment or a CI artifact store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.report.baseline import BaselineChange
from harness.report.bootstress import boot_stress_html
from harness.report.document import NightlyReport
from harness.report.gaps import cell_word, failure_basis, run_notes
from harness.report.history import HISTORY_CSS, render_history_html
from harness.report.markdown import _duration, headline, hunt_words
from harness.report.matrix import (
    FAIL,
    KNOWN,
    NO_TEST,
    NOT_RUN,
    PASS,
    XPASS,
    cell_tests,
    count_words,
    short_nodeid,
)
from harness.report.results import TestResult
from harness.report.switchpoints import switch_point_html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1d2430;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;
 border-bottom:1px solid #d8dde5;padding-bottom:4px}h3{font-size:14px;margin:0 0 6px;
 font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.ok{background:#1f7a3a}.bad{background:#b3261e}
.meta{color:#4b5563;margin:2px 0}.meta code{font-size:12px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #d8dde5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
table.matrix td.s{text-align:center;font-weight:600;white-space:nowrap;min-width:92px}
td.item small{color:#5b6472;display:block}
.pass{background:#d7f0dd;color:#14532d}.known-failure{background:#fdf0c8;color:#6b4e00}
.fail{background:#f9d4d0;color:#8a1c12}.xpass{background:#e6dcfa;color:#4c1d95}
.not-run{background:#f1f3f6;color:#8a93a0;font-weight:400!important}
td.s a{color:inherit}td.s small.was{display:block;font-weight:400;font-size:11px}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:3px}
.card{background:#fff;border:1px solid #d8dde5;border-left:5px solid #b3261e;
 border-radius:4px;padding:10px 14px;margin:10px 0}
.card.xpassed{border-left-color:#6d28d9}
.tag{display:inline-block;background:#eef1f5;border-radius:3px;padding:0 6px;margin:0 4px 4px 0;
 font-size:12px}.msg{font-weight:600;color:#8a1c12;margin:6px 0;white-space:pre-wrap}
pre{background:#0f172a;color:#e2e8f0;padding:8px 10px;border-radius:4px;overflow:auto;
 max-height:360px;font-size:12px;margin:4px 0}
details>summary{cursor:pointer;color:#334155;margin:4px 0}
.changes li{margin:2px 0}.bar{background:#93b4e6;height:10px;display:inline-block}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
table.known{table-layout:fixed;width:100%}td.test code{overflow-wrap:anywhere}
td.test small{display:block;color:#5b6472;overflow-wrap:anywhere}table.known small{display:block}
.measured{color:#14532d}.inferred{color:#8a5a00;font-style:italic}
"""

_WORD = {PASS: "pass", KNOWN: "known failure", FAIL: "FAIL", XPASS: "XPASS", NOT_RUN: "not run"}
_ARTIFACT_FILES = ("console.log", "qmp.log", "ssh.log", "qemu.cmdline", "reproduce.sh")


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _relative(path: str, report_dir: Path) -> str | None:
    try:
        return str(Path(path).resolve().relative_to(report_dir.resolve()))
    except ValueError:
        return None


def _link(path: str, report_dir: Path) -> str:
    """Relative when the artifact is inside the report directory, else a file:// URL."""
    relative = _relative(path, report_dir)
    return quote(relative) if relative is not None else "file://" + quote(path)


def _anchor(test: TestResult) -> str:
    return "t-" + "".join(c if c.isalnum() else "-" for c in f"{test.run}-{test.nodeid}")


def _header(report: NightlyReport) -> list[str]:
    status, _ = report.verdict()
    out = [(f"<h1>pci-harness nightly <span class='verdict {'ok' if status == 0 else 'bad'}'>"
           f"{'PASS' if status == 0 else 'FAIL'}</span></h1>"),
           f"<p class='meta'>{_e(headline(report))}</p>",
           (f"<p class='meta'>Started {_e(report.started)} on {_e(report.host)}; "
           f"command <code>{_e(' '.join(report.command))}</code></p>")]
    if report.interrupted:
        not_run = [f"QEMU {r.label}: {n}" for r in report.runs for n in r.not_run]
        out.append(f"<div class='card'><p class='msg'>{_e(report.interrupted.get('words'))}: "
                   "this report holds only the tests that ran.</p>"
                   + (f"<details><summary>not run ({len(not_run)})</summary><pre>"
                      f"{_e(chr(10).join(not_run))}</pre></details>" if not_run else "")
                   + "</div>")
    for run in report.runs:
        firmware = f" with {_e(run.firmware)}" if run.firmware else ""
        out.append(f"<p class='meta'>QEMU <b>{_e(run.label)}</b>: <code>{_e(run.qemu_binary)}"
                   f"</code>{firmware}, {_e(run.accel or 'accelerator not reported')}; pytest exit "
                   f"{run.pytest_exit}, {_duration(run.duration_s)}, "
                   f"{len(run.workers) or 1} worker(s)</p>")
        out += [f"<p class='meta inferred'>{_e(note)}</p>" for note in run_notes(run.qemu_version)]
    return out


def _matrix(report: NightlyReport) -> list[str]:
    runs = [r.label for r in report.runs]
    machines = list(next(iter(report.items.values()), {}))
    out = ["<h2>Seed items</h2>", "<table class='matrix'><thead><tr><th rowspan='2'>Seed item</th>"]
    out += [f"<th colspan='{len(machines)}'>QEMU {_e(r)}</th>" for r in runs]
    out.append("</tr><tr>" + "".join(f"<th>{_e(m)}</th>" for _ in runs for m in machines)
               + "</tr></thead><tbody>")
    # "was ..." marks cells that changed; a cell that merely gained tests is no news.
    counts = report.item_counts()
    was = {(c.seed, c.machine, c.run): c.before
           for c in (report.baseline.cells if report.baseline else ()) if c.before != NOT_RUN}
    for seed, by_machine in report.items.items():
        row = [(f"<tr><td class='item'><b>{_e(seed)}</b><small>"
               f"{_e(report.seeds.get(seed, ''))}</small></td>")]
        for run in runs:
            for machine in machines:
                status = by_machine[machine][run]
                tests = cell_tests(report.tests, seed, machine, run)
                tip = "; ".join(f"{t.nodeid}: {t.outcome}"
                                + (f" ({t.xfail_reason})" if t.xfail_reason else "")
                                for t in tests) or "no test ran"
                word = count_words(counts[seed][machine][run], _WORD) or NO_TEST
                bad = next((t for t in tests if t.bad), None)
                text = (f"<a href='#{_anchor(bad)}'>{_e(word)}</a>" if bad is not None
                        else _e(word))
                before = was.get((seed, machine, run))
                if before is not None:
                    text += f"<small class='was'>was {_e(_WORD[before])}</small>"
                row.append(f"<td class='s {status}' title='{_e(tip)}'>{text}</td>")
        out.append("".join(row) + "</tr>")
    out.append("</tbody></table>")
    out.append("<p class='legend'>" + "".join(
        f"<span class='{s}'>{_e(_WORD[s])}</span>" for s in (PASS, KNOWN, FAIL, XPASS, NOT_RUN))
        + f" &nbsp;{_e(NO_TEST)} = no test. A cell counts its tests per outcome and takes the "
        "colour of the worst; hover for the tests.</p>")
    return out


def _change_list(title: str, changes: Sequence[BaselineChange]) -> list[str]:
    if not changes:
        return []
    out = [f"<h3 style='font-family:inherit'>{_e(title)} ({len(changes)})</h3><ul class='changes'>"]
    for c in changes:
        where = ", ".join(x for x in (c.seed, c.machine, f"QEMU {c.run}") if x)
        out.append(f"<li><code>{_e(c.nodeid)}</code> ({_e(where)}): {_e(c.before or 'absent')}"
                   f" &rarr; <b>{_e(c.after or 'absent')}</b>"
                   + (f" &mdash; {_e(c.message)}" if c.message and c.after != "passed" else "")
                   + "</li>")
    return out + ["</ul>"]


def _baseline(report: NightlyReport) -> list[str]:
    diff = report.baseline
    if diff is None:
        return [f"<h2>Baseline</h2><p>{_e(report.baseline_note or 'no baseline')}</p>"]
    out = [(f"<h2>Changes since the baseline</h2><p class='meta'>Baseline "
           f"<code>{_e(diff.baseline)}</code> (started {_e(diff.baseline_started or '?')})</p>")]
    out += [f"<p class='meta'>Note: {_e(n)}</p>" for n in diff.notes]
    if diff.cells:
        out.append("<ul class='changes'>" + "".join(
            f"<li>{_e(c.seed)} / {_e(c.machine)} / QEMU {_e(c.run)}: "
            f"<span class='tag {c.before}'>{_e(c.before)}</span>&rarr;"
            f"<span class='tag {c.after}'>{_e(c.after)}</span></li>" for c in diff.cells)
            + "</ul>")
    out += _change_list("Regressions", diff.regressions)
    out += _change_list("Fixes", diff.fixes)
    out += _change_list("New known failures", diff.new_known_failures)
    out += _change_list("New failures", diff.new_failures)
    out += _change_list("Missing (ran in the baseline, not now)", diff.missing)
    if not (diff.regressions or diff.fixes or diff.new_known_failures or diff.new_failures
            or diff.missing):
        out.append("<p>No changes in test outcomes.</p>")
    return out


def _artifact_links(test: TestResult, report_dir: Path) -> str:
    if not test.artifacts:
        return ""
    root = Path(test.artifacts)
    shown = _relative(test.artifacts, report_dir) or test.artifacts
    links = [f"<a href='{_e(_link(test.artifacts, report_dir))}'>{_e(shown)}/</a>"]
    if root.is_dir():
        for name in _ARTIFACT_FILES:
            for found in sorted(root.rglob(name)):
                rel = found.relative_to(root)
                links.append(f"<a href='{_e(_link(str(found), report_dir))}'>{_e(rel)}</a>")
    else:
        links.append("(on the worker's host" + (f" {_e(test.host)}" if test.host else "") + ")")
    return "<p>Artifacts: " + " &middot; ".join(links) + "</p>"


def _failures(report: NightlyReport, report_dir: Path) -> list[str]:
    bad = report.bad_tests()
    out = [f"<h2>Failures ({len(bad)})</h2>"]
    out += [f"<div class='card'><p class='msg'>{_e(p)}</p></div>" for p in report.problems]
    if not bad and not report.problems:
        out.append("<p>None.</p>")
    for t in bad:
        tags = [t.outcome, f"QEMU {t.run}", t.machine or "no machine", t.seed or "no seed item",
                f"{t.duration:.1f} s"] + [x for x in (t.worker, t.host) if x]
        out.append(f"<div class='card {t.outcome}' id='{_anchor(t)}'><h3>{_e(t.nodeid)}</h3>"
                   + "".join(f"<span class='tag'>{_e(x)}</span>" for x in tags)
                   + f"<p class='msg'>{_e(t.message)}</p>" + _artifact_links(t, report_dir))
        for guest, tail in t.console_tail.items():
            out.append(f"<details open><summary>console tail: {_e(guest)}</summary>"
                       f"<pre>{_e(tail)}</pre></details>")
        if t.longrepr:
            out.append(f"<details><summary>pytest output</summary><pre>{_e(t.longrepr)}</pre>"
                       "</details>")
        out.append("</div>")
    return out


def _test_cell(nodeid: str) -> str:
    """A test as file::test (breakable after `_` and `::`), its parameters below,
    the full node id on hover."""
    name, params = short_nodeid(nodeid)
    shown = _e(name).replace("_", "_<wbr>").replace("::", "::<wbr>")
    return (f"<td class='test' title='{_e(nodeid)}'><code>{shown}</code>"
            + (f"<small>{_e(params)}</small>" if params else "") + "</td>")


def _known(tests: Iterable[TestResult]) -> list[str]:
    """The known failures: the reason gets the width; the test shows as
    file::test (parameters below it), its full id on hover."""
    known = [t for t in tests if t.outcome == "xfailed"]
    if not known:
        return []
    out = [(f"<h2>Known failures ({len(known)})</h2><table class='known'>"
           "<colgroup><col style='width:27%'><col style='width:6%'><col style='width:7%'>"
           "<col style='width:8%'><col></colgroup>"
           "<tr><th>Test</th><th>QEMU</th><th>Machine</th><th>Evidence</th><th>Reason</th></tr>")]
    for t in known:
        basis = failure_basis(t.known_gap, t.qemu_version, t.machine)
        evidence = (f"<span class='{basis.kind}' title='{_e(basis.words)}'>{_e(basis.kind)}</span>"
                    if basis is not None else NO_TEST)
        out.append(f"<tr>{_test_cell(t.nodeid)}<td>{_e(t.run)}</td>"
                   f"<td>{_e(t.machine or NO_TEST)}</td><td>{evidence}</td>"
                   f"<td>{_e(t.xfail_reason or '')}</td></tr>")
    return out + ["</table>"]


def _gaps(report: NightlyReport) -> list[str]:
    """Every known gap: its range, what was measured, and per QEMU whether the
    answer was measured on that very version or is inferred."""
    rows = report.known_gaps()
    if not rows:
        return []
    runs = [r.label for r in report.runs]
    out = ["<h2>Known gaps: measured or inferred</h2><table class='known'>"
           "<colgroup><col style='width:24%'><col style='width:14%'><col>"
           + "".join("<col style='width:13%'>" for _ in runs) + "</colgroup>"
           "<tr><th>Gap</th><th>Range</th><th>Measured</th>"
           + "".join(f"<th>QEMU {_e(r)}</th>" for r in runs) + "</tr>"]
    for row in rows:
        by_run = {b.run: b for b in row.runs}
        cells = "".join(
            f"<td class='{by_run[r].kind}' title='{_e(by_run[r].words)}'>"
            f"{_e(cell_word(by_run[r]))}</td>" if r in by_run else f"<td>{_e(NO_TEST)}</td>"
            for r in runs)
        out.append(f"<tr><td><code>{_e(row.id)}</code><small>{_e(row.seed)}</small></td>"
                   f"<td>{_e(row.scope)}</td><td>{_e(row.measured)}</td>{cells}</tr>")
    return out + [("</table><p class='meta'>measured: this very QEMU version was run and the "
                  "gap's tests gave this answer; inferred: the answer follows from the range "
                  "drawn between other measurements (hover for them).</p>")]


def _timings(report: NightlyReport) -> list[str]:
    tests = sorted(report.tests, key=lambda t: t.duration, reverse=True)
    total = sum(t.duration for t in tests)
    longest = tests[0].duration if tests else 1.0
    wall = sum(r.duration_s for r in report.runs)
    out = [(f"<h2>Timings</h2><p class='meta'>{len(tests)} tests, {total:.1f} s of test time in "
           f"{wall:.1f} s of pytest wall time ({total / wall if wall else 0:.2f}x parallel)</p>"),
           ("<table class='known'><colgroup><col><col style='width:7%'><col style='width:8%'>"
            "<col style='width:6%'><col style='width:7%'><col style='width:130px'></colgroup>"
            "<tr><th>Test</th><th>QEMU</th><th>Outcome</th><th>Worker</th>"
            "<th>Seconds</th><th></th></tr>")]
    for t in tests:
        width = int(120 * t.duration / longest) if longest else 0
        out.append(f"<tr>{_test_cell(t.nodeid)}<td>{_e(t.run)}</td>"
                   f"<td class='{_e(_status_class(t))}'>{_e(t.outcome)}</td>"
                   f"<td>{_e(t.worker or '')}</td><td class='num'>{t.duration:.2f}</td>"
                   f"<td><span class='bar' style='width:{width}px'></span></td></tr>")
    return out + ["</table>"]


def _status_class(test: TestResult) -> str:
    return {"passed": PASS, "xfailed": KNOWN, "xpassed": XPASS, "failed": FAIL,
            "error": FAIL}.get(test.outcome, NOT_RUN)


def _hunts(report: NightlyReport) -> list[str]:
    if not report.hunts:
        return []
    out = ["<h2>Ping-pong crash hunt</h2>"]
    for h in report.hunts:
        out.append(f"<div class='card' style='border-left-color:{'#1f7a3a' if h.ok else '#b3261e'}'>"
                   f"<p><b>QEMU {_e(h.run)}</b>: {'no crash found' if h.ok else 'FAILED'} "
                   f"(exit {h.exit_status}, {_duration(h.duration_s)}): "
                   f"{_e(hunt_words(h.result, h.error))}</p>"
                   f"<p class='meta'><code>{_e(' '.join(h.command))}</code></p>"
                   + (f"<details><summary>result</summary><pre>{_e(_brief_json(h.result))}"
                      "</pre></details>" if h.result else "") + "</div>")
    return out


def _brief_json(result: Mapping[str, Any]) -> str:
    """The verdict without the per-hop list (a thousand hops do not belong on the page)."""
    return json.dumps({k: v for k, v in result.items() if k != "per_hop"}, indent=1)


def render_html(report: NightlyReport, report_dir: Path) -> str:
    status, _ = report.verdict()
    body = (_header(report) + _matrix(report) + _baseline(report) + _failures(report, report_dir)
            + _known(report.tests) + _gaps(report) + boot_stress_html(report.boot_stress)
            + switch_point_html(report.tests)
            + _hunts(report)
            + render_history_html(list(report.history) + [report.as_night(report_dir.name)],
                                  report.slowdowns)
            + _timings(report))
    title = f"pci-harness nightly {report.started[:16]} {'PASS' if status == 0 else 'FAIL'}"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}{HISTORY_CSS}</style></head><body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")
