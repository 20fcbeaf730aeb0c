"""summary.md: the matrix and what changed, in Markdown a mailing list can take.

Plain words rather than colours or emoji: the text must still read in a
plain-text mail client.  Failing cells are bold so they stand out either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.report.baseline import BaselineChange
from harness.report.bootstress import boot_stress_markdown
from harness.report.document import NightlyReport
from harness.report.gaps import cell_word, failure_basis, run_notes
from harness.report.matrix import FAIL, KNOWN, NO_TEST, NOT_RUN, PASS, XPASS, count_words
from harness.report.results import counts
from harness.report.switchpoints import switch_point_lines

_WORD = {PASS: "pass", KNOWN: "known failure", FAIL: "**FAIL**", XPASS: "**XPASS**",
         NOT_RUN: "not run"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def headline(report: NightlyReport) -> str:
    status, reasons = report.verdict()
    tally = counts(report.tests)
    parts = [f"{n} {o}" for o, n in tally.items() if n]
    verdict = "PASS" if status == 0 else "FAIL (" + "; ".join(reasons) + ")"
    return (f"{len(report.tests)} tests: {', '.join(parts) or 'none'} in "
            f"{_duration(report.duration_s)}. Verdict: {verdict}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def matrix_lines(report: NightlyReport) -> list[str]:
    """A column per QEMU and machine kind; a cell counts its tests per outcome."""
    runs = [r.label for r in report.runs]
    first = next(iter(report.items.values()), {})
    machines = list(first)
    counts = report.item_counts()
    header = ["Seed item"] + [f"QEMU {r} {m}" for r in runs for m in machines]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for seed in report.items:
        cells = [count_words(counts[seed][m][r], _WORD) or NO_TEST for r in runs
                 for m in machines]
        lines.append(f"| {_cell(seed)} | " + " | ".join(cells) + " |")
    return lines


def _changes(title: str, changes: Sequence[BaselineChange]) -> list[str]:
    if not changes:
        return []
    lines = [f"### {title} ({len(changes)})", ""]
    for c in changes:
        where = ", ".join(x for x in (c.seed, c.machine, f"QEMU {c.run}") if x)
        message = f": {c.message}" if c.message and c.after not in ("passed",) else ""
        lines.append(f"- `{c.nodeid}` ({where}): {c.before or 'absent'} -> "
                     f"{c.after or 'absent'}{_cell(message)}")
    return lines + [""]


def render_markdown(report: NightlyReport) -> str:
    lines = [f"# pci-harness nightly {report.started[:16].replace('T', ' ')}", "",
             headline(report), ""]
    if report.interrupted:
        lines += [(f"**{_cell(str(report.interrupted.get('words')))}**: this report holds only "
                  "the tests that ran."), ""]
        lines += [f"- not run: `{n}` (QEMU {r.label})" for r in report.runs for n in r.not_run]
        lines += [""] if any(r.not_run for r in report.runs) else []
    for run in report.runs:
        firmware = f", {run.firmware}" if run.firmware else ""
        lines.append(f"- QEMU {run.label}: `{run.qemu_binary}` (version {run.qemu_version}"
                     f"{firmware}, "
                     f"{(run.accel or 'accelerator not reported').split(';')[0]}), "
                     f"{_duration(run.duration_s)}")
        lines += [f"  - inferred: {_cell(note)}" for note in run_notes(run.qemu_version)]
    lines += ["", "## Seed items", "",
              ("A cell counts the tests of each outcome: pass; known failure = strict xfail "
               "(a known QEMU gap on that QEMU); FAIL = failed or errored; XPASS = a known "
               f"failure passed; not run = skipped; {NO_TEST} = no test"), ""]
    lines += matrix_lines(report) + [""]
    diff = report.baseline
    if diff is not None:
        lines += [f"## Compared with {diff.baseline}", ""]
        lines += [f"- note: {n}" for n in diff.notes]
        lines += [f"- matrix: {c.seed} / {c.machine} / QEMU {c.run}: {c.before} -> {c.after}"
                  for c in diff.cells]
        if diff.notes or diff.cells:
            lines.append("")
        lines += _changes("Regressions", diff.regressions)
        lines += _changes("Fixes", diff.fixes)
        lines += _changes("New known failures", diff.new_known_failures)
        lines += _changes("New failures", diff.new_failures)
        lines += _changes("Missing (ran in the baseline, not now)", diff.missing)
        if not (diff.regressions or diff.fixes or diff.new_known_failures or
                diff.new_failures or diff.missing):
            lines += ["No changes in test outcomes.", ""]
    elif report.baseline_note:
        lines += [f"Baseline: {report.baseline_note}", ""]
    bad = report.bad_tests()
    if bad or report.problems:
        lines += ["## Failures", ""]
        lines += [f"- {p}" for p in report.problems]
        for t in bad:
            where = ", ".join(x for x in (t.seed, t.machine, f"QEMU {t.run}") if x)
            lines.append(f"- `{t.nodeid}` ({where}): {t.outcome}: {_cell(t.message)}")
            if t.artifacts:
                lines.append(f"  artifacts: `{t.artifacts}`")
        lines.append("")
    known = [t for t in report.tests if t.outcome == "xfailed"]
    if known:
        lines += ["## Known failures", ""]
        for t in known:
            basis = failure_basis(t.known_gap, t.qemu_version, t.machine)
            lines.append(f"- `{t.nodeid}` (QEMU {t.run}"
                         + (f", {basis.kind}" if basis is not None else "")
                         + f"): {_cell(t.xfail_reason or '')}")
        lines.append("")
    lines += _gap_lines(report)
    if report.slowdowns:
        lines += ["## Slowdowns (news, not failures)", ""]
        lines += [f"- {_cell(s.words())}" for s in report.slowdowns]
        lines.append("")
    lines += boot_stress_markdown(report.boot_stress)
    lines += switch_point_lines(report.tests)
    if report.hunts:
        lines += ["## Ping-pong crash hunt", ""]
        for h in report.hunts:
            lines.append(f"- QEMU {h.run}: {'no crash found' if h.ok else 'FAILED'} in "
                         f"{_duration(h.duration_s)}: {hunt_words(h.result, h.error)}")
        lines.append("")
    return "\n".join(lines)


def _gap_lines(report: NightlyReport) -> list[str]:
    """Every known gap: range, measurements, and per QEMU measured or inferred."""
    rows = report.known_gaps()
    runs = [r.label for r in report.runs]
    if not rows or not runs:
        return []
    header = ["Gap", "Range", "Measured"] + [f"QEMU {r}" for r in runs]
    lines = ["## Known gaps: measured or inferred", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        by_run = {b.run: b for b in row.runs}
        cells = [cell_word(by_run[r]) if r in by_run else NO_TEST for r in runs]
        lines.append(f"| {row.id} | {_cell(row.scope)} | {_cell(row.measured)} | "
                     + " | ".join(cells) + " |")
    return lines + ["", ("measured: this QEMU version was run with the gap's tests; inferred: "
                        "the answer follows from a range drawn between other versions."), ""]


def hunt_words(result: object, error: str | None) -> str:
    """One line from the pingpong verb's JSON (hops, seed, hop times, the failure)."""
    if error:
        return error
    if not isinstance(result, dict):
        return "no result"
    shown = [f"{k} {result[k]}" for k in ("hops", "seed") if k in result]
    hop = result.get("hop_s")
    if isinstance(hop, dict):
        shown.append(f"hop p50 {hop.get('p50')} s p95 {hop.get('p95')} s")
    down = result.get("downtime_ms")
    if isinstance(down, dict):
        shown.append(f"downtime p50 {down.get('p50')} ms max {down.get('max')} ms")
    if "verified_mib" in result:
        shown.append(f"verified {result['verified_mib']} MiB ({result.get('verified_pages', 0)} "
                     f"page checks) and {result.get('verified_files', 0)} files")
    failures = result.get("failures") or []
    if failures:
        shown.append("failure: " + "; ".join(str(f) for f in failures)[:500])
    failure = result.get("failure")
    if isinstance(failure, dict) and failure.get("artifacts"):
        shown.append(f"artifacts {failure['artifacts']}")
    return ", ".join(shown) or "ok"
