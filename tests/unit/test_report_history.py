"""The nightly history: strips, chart data and slowdowns from earlier report.json files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import pytest

from harness.report.figures import lower_is_better, record_figure, run_figures, test_figures
from harness.report.history import (
    MIN_EARLIER_NIGHTS,
    Night,
    chart_svg,
    load_history,
    render_history_html,
    series,
    slowdowns,
    strips,
)


def _report(day: int, status: str, figures: dict[str, float], ok: bool = True) -> dict:
    return {"format": 1, "tool": "pci-harness nightly", "ok": ok,
            "started": f"2026-11-{day:02d}T02:00:00+00:00", "duration_s": 300.0 + day,
            "items": {"master-abort": {"pc": {"7.2.22": status}, "q35": {"7.2.22": "pass"}}},
            "figures": figures}


def _write(root: Path, name: str, data: dict) -> Path:
    (root / name).mkdir()
    (root / name / "report.json").write_text(json.dumps(data))
    return root / name


def _nights(tmp_path: Path, hotplug: list[float]) -> list[Night]:
    for day, value in enumerate(hotplug, start=1):
        _write(tmp_path, f"2026110{day}-020000" if day < 10 else f"202611{day}-020000",
               _report(day, "pass" if day % 2 else "known-failure",
                       {"7.2.22 hotplug_unplug_s:acpi-pcihp": value,
                        "7.2.22 intx_interrupts_per_s:pc:depth0": 1000.0}))
    return load_history(tmp_path, None)


def test_history_is_read_oldest_first_and_limited(tmp_path):
    _write(tmp_path, "b", _report(3, "pass", {}))
    _write(tmp_path, "a", _report(1, "pass", {}))
    _write(tmp_path, "c", _report(2, "fail", {}))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "report.json").write_text("{not json")
    _write(tmp_path, "other-tool", {"tool": "something else", "started": "2026-11-09"})
    nights = load_history(tmp_path, tmp_path / "b")
    assert [n.directory for n in nights] == ["a", "c"], nights
    assert [n.directory for n in load_history(tmp_path, None, limit=2)] == ["c", "b"]


def test_strips_follow_each_cell_night_by_night(tmp_path):
    nights = _nights(tmp_path, [0.1, 0.1, 0.1])
    got = strips(nights)
    assert got[("master-abort", "pc", "7.2.22")] == ["pass", "known-failure", "pass"], got
    assert got[("master-abort", "q35", "7.2.22")] == ["pass"] * 3, got
    # A QEMU that was not run on an earlier night shows as not-run there.
    newest = Night("2026-11-20", "x", True, 1.0,
                   {"master-abort": {"pc": {"7.2.22": "pass", "10.0.2": "fail"}}}, {})
    assert strips(nights + [newest])[("master-abort", "pc", "10.0.2")] == \
        ["not-run"] * 3 + ["fail"]


def test_series_and_chart_carry_every_night(tmp_path):
    nights = _nights(tmp_path, [0.1, 0.12, 0.3])
    values = series(nights)["7.2.22 hotplug_unplug_s:acpi-pcihp"]
    assert values == [0.1, 0.12, 0.3], values
    svg = chart_svg("7.2.22 hotplug_unplug_s:acpi-pcihp", values, ["d1", "d2", "d3"])
    data = re.search(r"data-values='([^']*)'", svg)
    assert data and json.loads(data.group(1).replace("&quot;", '"')) == values, svg
    assert svg.count("<circle") == 3 and "latest <b>0.3</b>" in svg, svg
    # A night that did not measure the figure leaves a gap, not a zero.
    assert chart_svg("x", [None, 1.0, None, 2.0], ["a", "b", "c", "d"]).count("<circle") == 2


def test_doubled_hotplug_time_is_a_slowdown_and_noise_is_not(tmp_path):
    nights = _nights(tmp_path, [0.10, 0.12, 0.09, 0.11])
    name = "7.2.22 hotplug_unplug_s:acpi-pcihp"
    rate = "7.2.22 intx_interrupts_per_s:pc:depth0"
    found = slowdowns(nights, {name: 0.22, rate: 1000.0})
    assert [(s.figure, s.reference) for s in found] == [(name, 0.105)], found
    assert found[0].ratio == pytest.approx(0.22 / 0.105, rel=1e-3)
    assert "0.22 against a median of 0.105" in found[0].words()
    # 1.2x is host noise under TCG: not listed.
    assert slowdowns(nights, {name: 0.126, rate: 1000.0}) == []
    # A rate that halved is a slowdown too (smaller is slower for *_per_s).
    assert [s.figure for s in slowdowns(nights, {name: 0.1, rate: 450.0})] == [rate]
    # Too few earlier nights: no reference, no verdict.
    assert slowdowns(nights[:MIN_EARLIER_NIGHTS - 1], {name: 9.0}) == []
    # Tiny absolute steps are not news even when the ratio is large.
    assert slowdowns(nights, {"7.2.22 boot_restored_s": 0.02}) == []


def test_history_section_renders_strips_charts_and_slowdowns(tmp_path):
    nights = _nights(tmp_path, [0.10, 0.12, 0.09, 0.11])
    current = Night("2026-11-30T02:00:00+00:00", "now", True, 310.0, nights[-1].items,
                    {"7.2.22 hotplug_unplug_s:acpi-pcihp": 0.25})
    found = slowdowns(nights, current.figures)
    html = "\n".join(render_history_html(nights + [current], found))
    assert "History (5 nights" in html
    assert html.count("<svg class='strip'") == 2, html
    assert "hotplug_unplug_s:acpi-pcihp: 0.25 against" in html
    assert "<script" not in html and "http" not in html
    only_now = "\n".join(render_history_html([current], []))
    assert "No earlier nights" in only_now


def test_figures_are_numbers_named_by_unit():
    props = {"figure:boot_cold_s": 3.2, "figure:note": "text", "boot_s:guest": 3.2,
             "figure:flag": True}
    assert test_figures(props) == {"boot_cold_s": 3.2}
    assert lower_is_better("hotplug_unplug_s:acpi-pcihp") is True
    assert lower_is_better("pingpong_downtime_p50_ms") is True
    assert lower_is_better("intx_interrupts_per_s:pc:depth0") is False
    assert lower_is_better("bsel") is None
    got = run_figures("7.2.22", [{"boot_cold_s": 3.0}, {"boot_cold_s": 5.0},
                                 {"boot_cold_s": 4.0, "x_s": 1.0}], wall_s=290.0)
    assert got == {"7.2.22 boot_cold_s": 4.0, "7.2.22 x_s": 1.0, "7.2.22 wall_s": 290.0}


def test_record_figure_refuses_names_that_break_the_report_key():
    class Node:
        user_properties: ClassVar[list[tuple[str, object]]] = []

    class Request:
        node = Node()

    record_figure(Request(), "boot_cold_s", 3.14159)
    assert Node.user_properties == [("figure:boot_cold_s", 3.1416)]
    with pytest.raises(ValueError, match="no spaces"):
        record_figure(Request(), "boot cold", 1.0)


def _night_figures(accel: str, host: str, boot_s: float) -> dict[str, float]:
    from harness.report.document import RunInfo, nightly_figures
    from harness.report.results import TestResult

    run = RunInfo("7.2.22", "/usr/bin/qemu-system-x86_64", "7.2.22", accel, 0, 100.0,
                  "runs/7.2.22")
    test = TestResult("t.py::boot", "passed", 1.0, run="7.2.22", host=host,
                      figures={"boot_cold_s": boot_s})
    return nightly_figures([run], [test], [], 120.0, "controller")


def test_history_keys_carry_the_accelerator_and_the_host():
    kvm = _night_figures("kvm: KVM works", "lab1", 1.0)
    assert sorted(kvm) == ["7.2.22 kvm@lab1 boot_cold_s", "7.2.22 kvm@lab1 wall_s",
                           "nightly kvm@lab1 wall_s"], sorted(kvm)
    kvm_nights = [Night(f"2026-11-0{d}T02:00:00+00:00", f"n{d}", True, 120.0, {}, kvm)
                  for d in range(1, 5)]
    # A TCG night (3x slower boots) on the same host is not judged against KVM nights...
    tcg = _night_figures("tcg: KVM unusable (no /dev/kvm); using TCG", "lab1", 3.0)
    assert "7.2.22 tcg@lab1 boot_cold_s" in tcg, sorted(tcg)
    assert slowdowns(kvm_nights, tcg) == [], "a TCG night took KVM nights as its reference"
    # ...nor is a KVM night on another host; the same accelerator and host is.
    assert slowdowns(kvm_nights, _night_figures("kvm: KVM works", "lab2", 3.0)) == []
    found = slowdowns(kvm_nights, _night_figures("kvm: KVM works", "lab1", 3.0))
    assert [(s.figure, s.ratio) for s in found] == [("7.2.22 kvm@lab1 boot_cold_s", 3.0)], found
