"""The nightly report as one value: runs, tests, matrix, baseline diff, crash hunt.

`NightlyReport` is what report.json holds and what the HTML and Markdown
renderers read, so the three files cannot disagree.  `verdict()` is the single
place that decides the exit status from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.report.baseline import BaselineDiff, RunRef
from harness.report.figures import figure_scope, hunt_figures, run_figures
from harness.report.gaps import GapRow, gap_rows, run_notes
from harness.report.history import Night, Slowdown
from harness.report.matrix import ItemCounts, Items, build_item_counts
from harness.report.results import TestResult, counts

FORMAT = 1


@dataclass(frozen=True)
class RunInfo:
    """One pytest run: the suite against one QEMU binary."""

    label: str                  # unique in the report; the QEMU version unless ambiguous
    qemu_binary: str
    qemu_version: str
    accel: str | None           # the harness plugin's accelerator line, when a guest ran
    pytest_exit: int
    duration_s: float
    directory: str              # relative to the report dir: runs/<label>
    workers: tuple[Mapping[str, Any], ...] = ()
    lost_hosts: tuple[Mapping[str, Any], ...] = ()   # harness.lab.LostHost.to_dict()
    not_run: tuple[str, ...] = ()   # collected, never finished: the nightly was stopped
    firmware: str | None = None  # the suite's --firmware as resolved: "SeaBIOS 1.16.2-..."

    def ref(self) -> RunRef:
        return RunRef(self.label, self.qemu_binary)


@dataclass(frozen=True)
class HuntResult:
    """`pci-harness pingpong --until-fail` against one QEMU binary."""

    run: str
    command: tuple[str, ...]
    exit_status: int
    duration_s: float
    result: Mapping[str, Any] | None   # the verb's --json object
    error: str | None = None           # why there is no result (no JSON, timeout)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and self.error is None


def boot_stress_state(run: HuntResult) -> str:
    """passed, known (every stopped boot is a known gap of this QEMU and firmware:
    harness/qemu/known.py) or failed."""
    if run.ok:
        return "passed"
    result = run.result or {}
    if (run.error is None and run.exit_status == 1 and result.get("known_gaps")
            and result.get("unexplained_failures") == 0):
        return "known"
    return "failed"


def boot_stress_cell(run: HuntResult) -> dict[str, Any]:
    """One QEMU x firmware x machine cell of the matrix (report.json `boot_stress_matrix`)."""
    result = run.result or {}
    words = run.run.split(" ", 2)
    phases = result.get("phases") or {}
    return {"run": run.run, "qemu": words[0],
            "machine": str(result.get("machine") or (words[1] if len(words) > 1 else "?")),
            "firmware": str(result.get("firmware_label")
                            or (words[2] if len(words) > 2 else "the QEMU's own")),
            "state": boot_stress_state(run), "boots": result.get("boots", 0),
            "attempted": result.get("attempted", 0),
            "total_s": result.get("total_s") or {"p50": None, "p95": None},
            "firmware_s": phases.get("firmware") or {"p50": None, "p95": None},
            "known_gaps": list(result.get("known_gaps") or []),
            "failures": list(result.get("failures") or ([run.error] if run.error else []))}


@dataclass(frozen=True)
class NightlyReport:
    started: str                # ISO 8601, local time with offset
    finished: str
    duration_s: float
    host: str
    command: tuple[str, ...]
    pytest_args: tuple[str, ...]
    machines: tuple[str, ...]
    seeds: Mapping[str, str]
    runs: tuple[RunInfo, ...]
    tests: tuple[TestResult, ...]
    items: Items
    baseline: BaselineDiff | None = None
    baseline_note: str | None = None   # why there is no comparison
    hunts: tuple[HuntResult, ...] = ()
    boot_stress: tuple[HuntResult, ...] = ()  # `boot-stress --json` runs (report/bootstress.py)
    problems: tuple[str, ...] = field(default=())  # run-level failures (no tests, pytest crash)
    figures: Mapping[str, float] = field(default_factory=dict)  # "<qemu> <figure>" -> number
    slowdowns: tuple[Slowdown, ...] = ()   # news, not failures: the verdict ignores them
    history: tuple[Night, ...] = ()        # earlier nights next to this one, oldest first
    #: Set when a signal stopped the nightly (harness/nightly_stop.py `interruption`):
    #: signal, after_s, not_run, runs_not_started, words.
    interrupted: Mapping[str, Any] | None = None

    def item_counts(self) -> ItemCounts:
        """How many tests had each outcome, per cell of `items`."""
        return build_item_counts(self.tests, self.items)

    def known_gaps(self) -> list[GapRow]:
        """Every known gap with its measurements and, per run, whether its QEMU is
        inside the range and whether that was measured or is inferred."""
        return gap_rows([(r.label, r.qemu_version) for r in self.runs])

    def bad_tests(self) -> list[TestResult]:
        return [t for t in self.tests if t.bad]

    def verdict(self) -> tuple[int, list[str]]:
        """(exit status, reasons): 0 when everything passed or is a known failure."""
        reasons = list(self.problems)
        if self.interrupted:
            reasons.append(str(self.interrupted.get("words") or "interrupted"))
        tally = counts(self.tests)
        for outcome in ("failed", "error", "xpassed"):
            if tally[outcome]:
                reasons.append(f"{tally[outcome]} {outcome}")
        if self.baseline is not None and self.baseline.regressions:
            reasons.append(f"{len(self.baseline.regressions)} regressed since the baseline")
        for hunt in self.hunts:
            if not hunt.ok:
                reasons.append(f"ping-pong crash hunt on {hunt.run}: "
                               f"{hunt.error or f'exit status {hunt.exit_status}'}")
        for run in self.boot_stress:
            if boot_stress_state(run) == "failed":
                failures = "; ".join(str(f) for f in (run.result or {}).get("failures") or [])
                reasons.append(f"boot-stress on {run.run}: "
                               f"{run.error or failures[:400] or f'exit status {run.exit_status}'}")
        return (1 if reasons else 0), reasons

    def to_dict(self) -> dict[str, Any]:
        status, reasons = self.verdict()
        return {
            "format": FORMAT, "tool": "pci-harness nightly",
            "ok": status == 0, "exit_status": status, "reasons": reasons,
            "started": self.started, "finished": self.finished,
            "duration_s": round(self.duration_s, 3), "host": self.host,
            "command": list(self.command), "pytest_args": list(self.pytest_args),
            "machines": list(self.machines),
            "counts": counts(self.tests),
            "runs": [asdict(r) | {"workers": [dict(w) for w in r.workers],
                                  "lost_hosts": [dict(h) for h in r.lost_hosts],
                                  "inferred_facts": run_notes(r.qemu_version)}
                     for r in self.runs],
            "known_gaps": [g.to_dict() for g in self.known_gaps()],
            "tests": [t.to_dict() for t in self.tests],
            "items": self.items,
            "item_counts": self.item_counts(),
            "item_titles": dict(self.seeds),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "baseline_note": self.baseline_note,
            "pingpong": [asdict(h) | {"ok": h.ok, "result": dict(h.result) if h.result else None}
                         for h in self.hunts],
            "boot_stress": [asdict(h) | {"ok": h.ok, "state": boot_stress_state(h),
                                         "result": dict(h.result) if h.result else None}
                            for h in self.boot_stress],
            "boot_stress_matrix": [boot_stress_cell(h) for h in self.boot_stress],
            "failures": [f"{t.nodeid} [{t.run}]: {t.outcome}: {t.message}"
                         for t in self.bad_tests()],
            "figures": dict(self.figures),
            "slowdowns": [asdict(s) | {"words": s.words()} for s in self.slowdowns],
            "interrupted": dict(self.interrupted) if self.interrupted else None,
        }

    def as_night(self, directory: str) -> Night:
        """This report as the newest night of its history."""
        return Night(started=self.started, directory=directory, ok=self.verdict()[0] == 0,
                     duration_s=self.duration_s, items=self.items, figures=dict(self.figures))

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def figure_scopes(runs: Sequence[RunInfo], tests: Sequence[TestResult],
                  controller: str) -> dict[str, str]:
    """{run label: "7.2.22 tcg@host"}: the hosts whose workers ran its tests."""
    return {r.label: figure_scope(r.label, r.accel, [t.host for t in tests if t.run == r.label]
                                  or [controller]) for r in runs}


def nightly_figures(runs: Sequence[RunInfo], tests: Sequence[TestResult],
                    hunts: Sequence[HuntResult], duration_s: float,
                    controller: str) -> dict[str, float]:
    """report.json's `figures`: per QEMU run the tests' figures, its wall time, its
    hunts, each keyed with the accelerator and host it was measured on."""
    scopes = figure_scopes(runs, tests, controller)
    accels = sorted({scope.rsplit(" ", 1)[-1].split("@")[0] for scope in scopes.values()})
    whole = figure_scope("nightly", "+".join(accels),
                         [t.host for t in tests] or [controller])
    figures: dict[str, float] = {f"{whole} wall_s": round(duration_s, 3)}
    for run in runs:
        figures |= run_figures(scopes[run.label],
                               (t.figures for t in tests if t.run == run.label), run.duration_s)
    for h in hunts:  # on the controller, with the accelerator of its run
        if h.ok:
            first = next((r for r in runs if h.run.startswith(r.label)), None)
            figures |= hunt_figures(figure_scope(h.run, first.accel if first else None,
                                                 [controller]), h.result)
    return figures
