"""Switch points: where each switched hop of a test stopped the source's vCPU, and
the hop's verdict, for the nightly's "Switch points" table.

A test records its rows with `record_switch_points(request, rows)`
(harness.scenarios.migration.data.switch_rows gives them); they travel as one
JSON user property, so xdist carries them and junit.xml keeps them readable.
The table answers what a pass does not: which instructions tonight's sweeps
really migrated at, on which QEMU, and where the one that failed stood.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness.report.figures import _HasUserProperties

KEY = "switch_points"
#: The fields of a row the report keeps (StopRecord.as_dict + hop + verdict).
FIELDS = ("hop", "spec", "steps", "where", "instruction", "runstate", "verdict", "hop_s")


def record_switch_points(request: _HasUserProperties, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record this test's switched hops (switch_rows) for the nightly report."""
    kept = [{k: row.get(k) for k in FIELDS} for row in rows]
    request.node.user_properties.append((KEY, json.dumps(kept)))


def test_switch_points(properties: Mapping[str, object]) -> tuple[dict[str, Any], ...]:
    """The rows among one test's user properties (none: an empty tuple)."""
    value = properties.get(KEY)
    if not isinstance(value, str):
        return ()
    try:
        rows = json.loads(value)
    except ValueError:
        return ()
    return tuple({k: row.get(k) for k in FIELDS} for row in rows if isinstance(row, dict))


test_switch_points.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _rows(tests: Iterable[Any]) -> list[tuple[Any, Mapping[str, Any]]]:
    return [(t, row) for t in tests for row in getattr(t, "switch_points", ())]


def _where(row: Mapping[str, Any]) -> str:
    if row.get("where"):
        return str(row["where"])
    return f"not reached ({row.get('spec')} +{row.get('steps') or 0} steps)"


def switch_point_lines(tests: Iterable[Any]) -> list[str]:
    """summary.md's table: a row per switched hop of every test that recorded some."""
    rows = _rows(tests)
    if not rows:
        return []
    lines = ["## Switch points", "",
             "Where each switched hop stopped the source's vCPU before it migrated.", "",
             "| QEMU | Test | Hop | Stopped at | Instruction | Verdict |",
             "|---|---|---|---|---|---|"]
    for test, row in rows:
        verdict = str(row.get("verdict") or "?")
        lines.append(f"| {test.run} | `{test.nodeid.split('::')[-1]}` | {row.get('hop')} | "
                     f"{_cell(_where(row))} | {_cell(str(row.get('instruction') or ''))} | "
                     f"{verdict if verdict == 'ok' else f'**{verdict}**'} |")
    return lines + [""]


def switch_point_html(tests: Iterable[Any]) -> list[str]:
    """report.html's table (folded unless a hop failed: a sweep night has dozens of rows)."""
    rows = _rows(tests)
    if not rows:
        return []
    failed = sum(1 for _, row in rows if row.get("verdict") != "ok")
    summary = (f"{len(rows)} switched hops, {failed} failed: where each stopped the "
               "source's vCPU")
    header = ("<table><tr><th>QEMU</th><th>Test</th><th>Hop</th><th>Stopped at</th>"
              "<th>Instruction</th><th>Verdict</th></tr>")
    out = ["<h2>Switch points</h2>",
           f"<details{' open' if failed else ''}><summary>{summary}</summary>", header]
    for test, row in rows:
        verdict = str(row.get("verdict") or "?")
        out.append(f"<tr><td>{html.escape(str(test.run))}</td>"
                   f"<td><code>{html.escape(test.nodeid.split('::')[-1])}</code></td>"
                   f"<td class='num'>{html.escape(str(row.get('hop')))}</td>"
                   f"<td><code>{html.escape(_where(row))}</code></td>"
                   f"<td><code>{html.escape(str(row.get('instruction') or ''))}</code></td>"
                   f"<td class='{'pass' if verdict == 'ok' else 'fail'}'>"
                   f"{html.escape(verdict)}</td></tr>")
    return out + ["</table></details>"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
