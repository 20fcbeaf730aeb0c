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

from harness.report.document import HuntResult


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


def boot_stress_figures(label: str, result: Mapping[str, Any] | None) -> dict[str, float]:
    """History figures: total boot p50 per machine (a slower boot is news)."""
    if not result:
        return {}
    total = result.get("total_s")
    machine = str(result.get("machine", "?"))
    if isinstance(total, Mapping) and isinstance(total.get("p50"), (int, float)):
        return {f"{label} boot_stress_total_p50_s:{machine}": round(float(total["p50"]), 4)}
    return {}


def boot_stress_markdown(runs: Sequence[HuntResult]) -> list[str]:
    if not runs:
        return []
    lines = ["## Boot-stress (cold boots from AHCI)", ""]
    lines += [f"- {r.run}: {'passed' if r.ok else 'FAILED'}: "
              f"{boot_stress_words(r.result, r.error)}" for r in runs]
    return lines + [""]


def boot_stress_html(runs: Sequence[HuntResult]) -> list[str]:
    if not runs:
        return []
    out = ["<h2>Boot-stress (cold boots from AHCI)</h2>"]
    for r in runs:
        colour = "#1f7a3a" if r.ok else "#b3261e"
        out.append(f"<div class='card' style='border-left-color:{colour}'>"
                   f"<p><b>{html.escape(r.run)}</b>: {'passed' if r.ok else 'FAILED'} "
                   f"(exit {r.exit_status}): {html.escape(boot_stress_words(r.result, r.error))}"
                   f"</p><p class='meta'><code>{html.escape(' '.join(r.command))}</code></p>"
                   "</div>")
    return out
