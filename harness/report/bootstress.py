"""The nightly's short boot-stress runs in its reports.

Each run is `pci-harness boot-stress --machine M --boots N --json`, started
like a crash hunt (harness/report/hunt.py: a subprocess whose last stdout line
is its verdict) and kept as a HuntResult in NightlyReport.boot_stress.  This
module turns their verdicts into words, report lines and history figures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from harness.report.document import HuntResult, boot_stress_cell, boot_stress_state


def boot_stress_words(result: Mapping[str, Any] | None, error: str | None) -> str:
    """One line: boots completed, total and per-phase p50/p95, the first failure."""
    if error:
        return error
    if not result:
        return "no result"
    shown = [f"{result.get('boots')} of {result.get('attempted')} boots completed"]
    total = result.get("total_s")
    if isinstance(total, Mapping) and total.get("p50") is not None:
        shown.append(f"total p50 {total['p50']} s p95 {total['p95']} s")
    phases = result.get("phases")
    if isinstance(phases, Mapping):
        slow = [f"{name} {f['p50']}/{f['p95']}" for name, f in phases.items()
                if isinstance(f, Mapping) and f.get("p50") is not None]
        if slow:
            shown.append("phases p50/p95 s: " + " ".join(slow))
    failures = result.get("failures") or []
    if failures:
        shown.append("failure: " + "; ".join(str(f) for f in failures)[:500])
    return ", ".join(shown)


def boot_stress_figures(label: str, result: Mapping[str, Any] | None,
                        firmware: str = "") -> dict[str, float]:
    """History figures: total boot p50 per machine (and firmware, when the night
    had several) -- a slower boot is news."""
    if not result:
        return {}
    total = result.get("total_s")
    machine = str(result.get("machine", "?")) + (f":{firmware}" if firmware else "")
    if isinstance(total, Mapping) and isinstance(total.get("p50"), (int, float)):
        return {f"{label} boot_stress_total_p50_s:{machine}": round(float(total["p50"]), 4)}
    return {}


_STATE_WORDS = {"passed": "passed", "known": "KNOWN GAP", "failed": "FAILED"}


def _cell_words(cell: Mapping[str, Any]) -> str:
    total, firmware = cell["total_s"], cell["firmware_s"]
    out = f"{cell['boots']}/{cell['attempted']} boots"
    if total.get("p50") is not None:
        out += f", total p50 {total['p50']} s p95 {total['p95']} s"
    if firmware.get("p50") is not None:
        out += f", firmware p50 {firmware['p50']} s p95 {firmware['p95']} s"
    if cell["known_gaps"]:
        out += f", known gap {', '.join(cell['known_gaps'])}"
    return out


def boot_stress_markdown(runs: Sequence[HuntResult]) -> list[str]:
    if not runs:
        return []
    lines = ["## Boot-stress (cold boots from AHCI)", ""]
    lines += [f"- {r.run}: {_STATE_WORDS[boot_stress_state(r)]}: "
              f"{boot_stress_words(r.result, r.error)}" for r in runs]
    cells = [boot_stress_cell(r) for r in runs]
    qemus = list(dict.fromkeys(c["qemu"] for c in cells))
    rows = list(dict.fromkeys((c["machine"], c["firmware"]) for c in cells))
    if len(rows) > 1 or len(qemus) > 1:
        lines += ["", "| machine | firmware | " + " | ".join(f"QEMU {q}" for q in qemus) + " |",
                  "|---|---|" + "---|" * len(qemus)]
        for machine, firmware in rows:
            found = {c["qemu"]: c for c in cells
                     if (c["machine"], c["firmware"]) == (machine, firmware)}
            lines.append(f"| {machine} | {firmware} | " + " | ".join(
                f"{_STATE_WORDS[found[q]['state']]}: {_cell_words(found[q])}" if q in found
                else "-" for q in qemus) + " |")
    return lines + [""]


_COLOUR = {"passed": "#1f7a3a", "known": "#b26a00", "failed": "#b3261e"}


def boot_stress_matrix_html(runs: Sequence[HuntResult]) -> list[str]:
    """QEMU x firmware x machine: boots and p50/p95 per cell, coloured by state."""
    cells = [boot_stress_cell(r) for r in runs]
    qemus = list(dict.fromkeys(c["qemu"] for c in cells))
    rows = list(dict.fromkeys((c["machine"], c["firmware"]) for c in cells))
    out = ["<table class='matrix'><tr><th>machine</th><th>firmware</th>"
           + "".join(f"<th>QEMU {html.escape(q)}</th>" for q in qemus) + "</tr>"]
    for machine, firmware in rows:
        found = {c["qemu"]: c for c in cells if (c["machine"], c["firmware"]) == (machine, firmware)}
        tds = []
        for q in qemus:
            cell = found.get(q)
            if cell is None:
                tds.append("<td>-</td>")
                continue
            tds.append(f"<td style='color:{_COLOUR[cell['state']]}' "
                       f"title='{html.escape('; '.join(cell['failures'])[:600], quote=True)}'>"
                       f"<b>{_STATE_WORDS[cell['state']]}</b><br>"
                       f"{html.escape(_cell_words(cell))}</td>")
        out.append(f"<tr><td>{html.escape(machine)}</td><td>{html.escape(firmware)}</td>"
                   + "".join(tds) + "</tr>")
    return out + ["</table>"]


def boot_stress_html(runs: Sequence[HuntResult]) -> list[str]:
    if not runs:
        return []
    out = ["<h2>Boot-stress (cold boots from AHCI)</h2>", *boot_stress_matrix_html(runs)]
    for r in runs:
        state = boot_stress_state(r)
        colour = _COLOUR[state]
        out.append(f"<div class='card' style='border-left-color:{colour}'>"
                   f"<p><b>{html.escape(r.run)}</b>: {_STATE_WORDS[state]} "
                   f"(exit {r.exit_status}): {html.escape(boot_stress_words(r.result, r.error))}"
                   f"</p><p class='meta'><code>{html.escape(' '.join(r.command))}</code></p>"
                   "</div>")
    return out
