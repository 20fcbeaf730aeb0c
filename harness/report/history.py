"""A nightly read as a series: the earlier reports next to this one.

`load_history` reads the report.json of the sibling run directories (the last
30 by default, oldest first).  From them and the current report come:

- strips: per seed item, machine kind and QEMU label, the cell's status night
  by night (the matrix of every night, side by side);
- series: per figure (wall time, boot, hotplug, ping-pong, INT#x rate), its
  value night by night, drawn as small inline SVG charts;
- slowdowns: figures that moved the slow way by more than SLOWDOWN_RATIO
  against the median of the previous nights with the same key -- the same
  QEMU label, accelerator and host (report/figures.py `figure_scope`): a KVM
  night is never the reference of a TCG night.  A slowdown is news, not a
  failure: it does not change the verdict.

Why 1.5x against a median of at least 3 earlier nights: TCG timings on a shared
host drift night to night (measured here: ping-pong hop p50 0.26-0.32 s over six
runs, cold boot 2.9-3.4 s, about +-20 %), so a ratio near 1.2 would cry wolf
every week; "hotplug got twice as slow" is 2x and is caught.  The median of
several nights keeps one noisy night from becoming the reference.  Figures
below MIN_SECONDS of absolute change are ignored (a 10 ms step that doubled
is noise in the process start, not a QEMU regression).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from harness.report.figures import figure_name, lower_is_better
from harness.report.matrix import NOT_RUN

REPORT_NAME = "report.json"
HISTORY_NIGHTS = 30
SLOWDOWN_RATIO = 1.5
MIN_EARLIER_NIGHTS = 3
REFERENCE_NIGHTS = 7
MIN_SECONDS = 0.05


@dataclass(frozen=True)
class Night:
    """What the history needs of one nightly report."""

    started: str
    directory: str          # the run directory's name (its link from the page)
    ok: bool
    duration_s: float
    items: Mapping[str, Mapping[str, Mapping[str, str]]]
    figures: Mapping[str, float]

    @classmethod
    def from_report(cls, data: Mapping[str, Any], directory: str) -> Night:
        figures = data.get("figures") or {}
        return cls(started=str(data.get("started") or ""), directory=directory,
                   ok=bool(data.get("ok")), duration_s=float(data.get("duration_s") or 0.0),
                   items=data.get("items") or {},
                   figures={str(k): float(v) for k, v in figures.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})


@dataclass(frozen=True)
class Slowdown:
    figure: str
    current: float
    reference: float        # median of the earlier nights used
    ratio: float            # >1: how many times slower (for rates: reference / current)
    nights: int             # how many earlier nights the reference is made of

    def words(self) -> str:
        return (f"{self.figure}: {self.current:g} against a median of {self.reference:g} over "
                f"the previous {self.nights} nights ({self.ratio:.2f}x slower)")


def load_history(reports_dir: Path, exclude: Path | None,
                 limit: int = HISTORY_NIGHTS) -> list[Night]:
    """The last `limit` nights in `reports_dir` (oldest first), without `exclude`."""
    nights: list[Night] = []
    if not reports_dir.is_dir():
        return nights
    for child in reports_dir.iterdir():
        path = child / REPORT_NAME
        if exclude is not None and child.resolve() == exclude.resolve():
            continue
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("tool") == "pci-harness nightly":
            nights.append(Night.from_report(data, child.name))
    nights.sort(key=lambda n: n.started)
    return nights[-limit:] if limit > 0 else []


def strips(nights: Sequence[Night]) -> dict[tuple[str, str, str], list[str]]:
    """(seed, machine, QEMU label) -> status per night, oldest first.

    Keys are those of the newest night; a cell absent from an earlier night
    (a QEMU not run then, an item added since) is "not-run" there.
    """
    if not nights:
        return {}
    keys = [(seed, machine, label)
            for seed, by_machine in nights[-1].items.items()
            for machine, by_label in by_machine.items() for label in by_label]
    return {key: [_cell(n, key) for n in nights] for key in keys}


def _cell(night: Night, key: tuple[str, str, str]) -> str:
    seed, machine, label = key
    return str(night.items.get(seed, {}).get(machine, {}).get(label, NOT_RUN))


def series(nights: Sequence[Night]) -> dict[str, list[float | None]]:
    """figure -> value per night (None where that night did not measure it)."""
    names = sorted({name for n in nights for name in n.figures})
    return {name: [n.figures.get(name) for n in nights] for name in names}


def slowdowns(earlier: Sequence[Night], current: Mapping[str, float]) -> list[Slowdown]:
    """Figures of the current night that moved the slow way beyond the threshold."""
    found: list[Slowdown] = []
    for name, value in sorted(current.items()):
        direction = lower_is_better(figure_name(name))
        if direction is None:
            continue
        before = [n.figures[name] for n in earlier if name in n.figures][-REFERENCE_NIGHTS:]
        if len(before) < MIN_EARLIER_NIGHTS:
            continue
        reference = statistics.median(before)
        if direction:
            seconds = (value - reference) * (0.001 if name.endswith("_ms") else 1.0)
            if reference <= 0 or value / reference < SLOWDOWN_RATIO or seconds < MIN_SECONDS:
                continue
            ratio = value / reference
        else:
            if value <= 0:
                ratio = float("inf")
            elif reference / value < SLOWDOWN_RATIO:
                continue
            else:
                ratio = reference / value
        found.append(Slowdown(name, value, round(reference, 4), round(ratio, 3), len(before)))
    return found


# ---- HTML ----

_STRIP_COLOUR = {"pass": "#3f9b5a", "known-failure": "#d9a400", "fail": "#c0392b",
                 "xpass": "#7c4dcc", "not-run": "#d5d9e0"}


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def strip_svg(statuses: Sequence[str], dates: Sequence[str]) -> str:
    """One square per night, newest on the right; the title says date and status."""
    size, gap = 10, 2
    width = len(statuses) * (size + gap)
    rects = "".join(
        f"<rect x='{i * (size + gap)}' y='0' width='{size}' height='{size}' "
        f"fill='{_STRIP_COLOUR.get(s, '#d5d9e0')}'><title>{_e(d)}: {_e(s)}</title></rect>"
        for i, (s, d) in enumerate(zip(statuses, dates)))
    return (f"<svg class='strip' width='{width}' height='{size}' viewBox='0 0 {width} {size}' "
            f"role='img' aria-label='{_e(' '.join(statuses))}'>{rects}</svg>")


def chart_svg(name: str, values: Sequence[float | None], dates: Sequence[str]) -> str:
    """A small line chart: one point per night that measured the figure."""
    width, height, pad = 300, 70, 6
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return ""
    low = min(v for _, v in points)
    high = max(v for _, v in points)
    span = (high - low) or (abs(high) or 1.0)
    steps = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * i / steps
        y = height - pad - (height - 2 * pad) * ((v - low) / span if high != low else 0.5)
        return round(x, 1), round(y, 1)

    coords = [xy(i, v) for i, v in points]
    line = " ".join(f"{x},{y}" for x, y in coords)
    dots = "".join(f"<circle cx='{x}' cy='{y}' r='2.5'><title>{_e(dates[i])}: {v:g}</title>"
                   f"</circle>" for (i, v), (x, y) in zip(points, coords))
    return (f"<figure class='chart'><figcaption><code>{_e(name)}</code> latest "
            f"<b>{points[-1][1]:g}</b> (min {low:g}, max {high:g})</figcaption>"
            f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"data-figure='{_e(name)}' data-values='{_e(json.dumps(list(values)))}'>"
            f"<rect width='{width}' height='{height}' fill='#fff' stroke='#d8dde5'/>"
            f"<polyline fill='none' stroke='#2f5fa8' stroke-width='1.5' points='{line}'/>"
            f"{dots}</svg></figure>")


HISTORY_CSS = """
svg.strip{vertical-align:middle}figure.chart{display:inline-block;margin:6px 14px 6px 0}
figure.chart figcaption{font-size:12px;color:#4b5563}figure.chart circle{fill:#2f5fa8}
"""


def render_history_html(nights: Sequence[Night], found: Sequence[Slowdown]) -> list[str]:
    """The history section: nights include the current one, last."""
    if len(nights) < 2:
        return [("<h2>History</h2><p>No earlier nights next to this report yet: the history "
                 "starts with the next run.</p>")]
    dates = [n.started[:16].replace("T", " ") for n in nights]
    out = [f"<h2>History ({len(nights)} nights, {_e(dates[0])} to {_e(dates[-1])})</h2>"]
    out.append("<h3 style='font-family:inherit'>Slowdowns</h3>")
    if found:
        out.append("<ul class='changes'>" + "".join(f"<li>{_e(s.words())}</li>" for s in found)
                   + "</ul>")
    else:
        out.append(f"<p>None beyond {SLOWDOWN_RATIO}x the median of the previous nights.</p>")
    out.append("<table class='history'><tr><th>Seed item</th><th>Machine</th><th>QEMU</th>"
               "<th>Night by night (newest right)</th></tr>")
    for (seed, machine, label), statuses in strips(nights).items():
        out.append(f"<tr><td>{_e(seed)}</td><td>{_e(machine)}</td><td>{_e(label)}</td>"
                   f"<td>{strip_svg(statuses, dates)}</td></tr>")
    out.append("</table>")
    charts = [chart_svg(name, values, dates) for name, values in series(nights).items()]
    out.append("<h3 style='font-family:inherit'>Figures</h3><div class='charts'>"
               + "".join(charts) + "</div>")
    return out
