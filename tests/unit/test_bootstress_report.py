"""The nightly's boot-stress runs: verdict, summary.md, report.html, figures, and the
nightly really starting them (with a QEMU that cannot boot, so it must fail)."""

from __future__ import annotations

import dataclasses
import json

# Sibling test modules, by the name pytest imports them under (their directory is on
# sys.path): `tests.unit.x` would need the checkout root on sys.path, which would shadow
# the installed package tox tests.
from test_report_nightly import nightly
from test_report_render import make_report

from harness.report.bootstress import boot_stress_figures, boot_stress_words
from harness.report.document import HuntResult
from harness.report.html import render_html
from harness.report.markdown import render_markdown

PASSED = {"ok": True, "boots": 3, "attempted": 3, "machine": "q35", "failures": [],
          "total_s": {"p50": 6.8, "p95": 7.1},
          "phases": {"firmware": {"p50": 0.3, "p95": 0.4}, "ssh": {"p50": 0.5, "p95": 0.6}}}
FAILED = {**PASSED, "ok": False, "boots": 1, "attempted": 2, "machine": "pc",
          "failures": [("boot 2 stopped in the firmware phase: No bootable device; "
                       "artifacts in /r/boot-0002")]}


def _run(label: str, result: dict, status: int) -> HuntResult:
    return HuntResult(run=label, command=("pci-harness", "boot-stress"), exit_status=status,
                      duration_s=20.0, result=result)


def test_words_name_boots_times_and_the_failure():
    words = boot_stress_words(PASSED, None)
    assert "3 of 3 boots completed" in words and "total p50 6.8 s p95 7.1 s" in words, words
    assert "firmware 0.3/0.4" in words, words
    words = boot_stress_words(FAILED, None)
    assert "1 of 2 boots completed" in words and "stopped in the firmware phase" in words
    assert boot_stress_words(None, "no verdict within 390 s") == "no verdict within 390 s"


def test_a_failed_boot_stress_fails_the_night_and_is_reported(tmp_path):
    good = dataclasses.replace(make_report(tmp_path, [("passed", "q35-hotplug", "q35")]),
                               boot_stress=(_run("7.2.22 q35", PASSED, 0),))
    assert good.verdict() == (0, [])
    bad = dataclasses.replace(good, boot_stress=(_run("7.2.22 q35", PASSED, 0),
                                                 _run("7.2.22 pc", FAILED, 1)))
    status, reasons = bad.verdict()
    assert status == 1 and reasons == [
        ("boot-stress on 7.2.22 pc: boot 2 stopped in the firmware phase: No bootable device; "
        "artifacts in /r/boot-0002")], reasons
    markdown = render_markdown(bad).split("## Boot-stress (cold boots from AHCI)")[1]
    assert "- 7.2.22 q35: passed: 3 of 3 boots completed" in markdown, markdown
    assert "- 7.2.22 pc: FAILED: 1 of 2 boots completed" in markdown, markdown
    page = render_html(bad, tmp_path)
    assert "Boot-stress (cold boots from AHCI)" in page and "1 of 2 boots completed" in page
    report = bad.to_dict()
    assert [(r["run"], r["ok"]) for r in report["boot_stress"]] == [("7.2.22 q35", True),
                                                                    ("7.2.22 pc", False)]


def test_figures_are_the_total_p50_per_machine():
    assert boot_stress_figures("7.2.22", PASSED) == {
        "7.2.22 boot_stress_total_p50_s:q35": 6.8}
    assert boot_stress_figures("7.2.22", None) == {}


def test_the_nightly_runs_boot_stress_per_machine(tmp_path):
    # The fake QEMU of the nightly's own tests cannot boot: the boot-stress run
    # must be there, failed, and fail the night -- never silently skipped.
    out = tmp_path / "reports" / "bs"
    proc, verdict = nightly(tmp_path, "--output", str(out), "--jobs", "0",
                            "--machines", "q35", "--boot-stress-boots", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    [run] = report["boot_stress"]
    assert run["run"] == "9.9.1 q35" and run["ok"] is False, run
    assert "boot-stress" in run["command"] and "--boots" in run["command"]
    assert any(r.startswith("boot-stress on 9.9.1 q35") for r in verdict["reasons"]), verdict
    assert "## Boot-stress (cold boots from AHCI)" in (out / "summary.md").read_text()


STALLED = {**FAILED, "boots": 0, "attempted": 2, "machine": "q35",
           "firmware_label": "SeaBIOS 1.16.2-debian-1.16.2-1",
           "known_gaps": ["ahci-tfes-only-seabios-stall"], "unexplained_failures": 0,
           "total_s": {"p50": None, "p95": None}, "phases": {},
           "failures": ["boot 1 stopped in the firmware phase: the firmware stalled"]}


def test_a_known_firmware_stall_is_its_own_cell_not_red(tmp_path):
    fast = {**PASSED, "firmware_label": "SeaBIOS 1.16.3-debian-1.16.3-2~bpo12+1"}
    runs = (_run("10.0.2 q35 SeaBIOS-1.16.2", STALLED, 1),
            _run("10.0.2 q35 SeaBIOS-1.16.3", fast, 0),
            _run("7.2.22 q35 SeaBIOS-1.16.2", {**PASSED, "firmware_label":
                                               "SeaBIOS 1.16.2-debian-1.16.2-1"}, 0))
    report = dataclasses.replace(make_report(tmp_path, [("passed", "q35-hotplug", "q35")]),
                                 boot_stress=runs)
    assert report.verdict() == (0, [])
    # The same run with a boot the gap does not explain is red.
    red = dataclasses.replace(report, boot_stress=(
        _run("10.0.2 q35 SeaBIOS-1.16.2", {**STALLED, "unexplained_failures": 1}, 1),))
    assert red.verdict()[0] == 1
    cells = {(c["qemu"], c["firmware"]): c for c in report.to_dict()["boot_stress_matrix"]}
    assert cells[("10.0.2", "SeaBIOS 1.16.2-debian-1.16.2-1")]["state"] == "known"
    assert cells[("10.0.2", "SeaBIOS 1.16.3-debian-1.16.3-2~bpo12+1")]["state"] == "passed"
    assert cells[("7.2.22", "SeaBIOS 1.16.2-debian-1.16.2-1")]["total_s"] == {"p50": 6.8,
                                                                             "p95": 7.1}
    markdown = render_markdown(report)
    assert ("| q35 | SeaBIOS 1.16.2-debian-1.16.2-1 | KNOWN GAP: 0/2 boots, known gap "
            "ahci-tfes-only-seabios-stall | passed: 3/3 boots, total p50 6.8 s p95 7.1 s, "
            "firmware p50 0.3 s p95 0.4 s |") in markdown, markdown
    page = render_html(report, tmp_path)
    assert "<th>QEMU 10.0.2</th><th>QEMU 7.2.22</th>" in page and "KNOWN GAP" in page
