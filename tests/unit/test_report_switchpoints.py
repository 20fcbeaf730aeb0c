"""The nightly's "Switch points" table: a test's switched hops recorded as a user
property, folded into its TestResult, kept through report.json, rendered (no QEMU)."""

from __future__ import annotations

from types import SimpleNamespace

from test_report_results import OK_SETUP, OK_TEARDOWN, Phase

from harness.report.results import TestResult, result_from_reports
from harness.report.switchpoints import (
    record_switch_points,
    switch_point_html,
    switch_point_lines,
)
from harness.scenarios.migration.data import HopRecord, switch_rows
from harness.scenarios.migration.hop import HopFailure, HopStats
from harness.scenarios.migration.switchpoint import SwitchPlan, SwitchPoint
from harness.scenarios.migration.switchstop import StopRecord

PLAN = SwitchPlan("sweep", point=SwitchPoint("vp_notify"))


def _stats(hop: int) -> HopStats:
    return HopStats(hop, f"g{hop - 1:02d}", f"g{hop:02d}", 0.1, 0.2, 0.0, 0.1, 0.5, 10.0, 200.0,
                    1.0, 1, "running")


def _recorded(failure: HopFailure | None, reached: bool) -> TestResult:
    """A sweep whose hop 1 passed at vp_notify+0x0 and whose hop 2 failed (or did not)."""
    stop1 = StopRecord(PLAN.for_hop(1), 0x10, "vp_notify+0x0 [virtio_pci]", "nopl 0x0(%rax)",
                       "0f1f", 0.2)
    stop2 = StopRecord(PLAN.for_hop(2), 0x15, "vp_notify+0x5 [virtio_pci]", "push %rbp", "55",
                       0.2)
    records = [HopRecord(_stats(1), 0.1, stop=stop1)]
    stops = {1: stop1, **({2: stop2} if reached else {})}
    if failure is None:
        records.append(HopRecord(_stats(2), 0.1, stop=stop2))
    node = SimpleNamespace(user_properties=[])
    record_switch_points(SimpleNamespace(node=node), switch_rows(records, stops, failure, PLAN))
    call = Phase("call", "failed" if failure else "passed", "E boom" if failure else "",
                 user_properties=list(node.user_properties))
    return result_from_reports("tests/pci/seed/t.py::test_sweep_over_virtio_blk_kick",
                               [OK_SETUP, call, OK_TEARDOWN], run="7.2.22")


def test_rows_travel_from_the_test_to_report_json_and_back():
    result = _recorded(HopFailure("ssh-dead", 2, "no answer"), reached=True)
    assert [(r["hop"], r["where"], r["verdict"]) for r in result.switch_points] == [
        (1, "vp_notify+0x0 [virtio_pci]", "ok"), (2, "vp_notify+0x5 [virtio_pci]", "ssh-dead")]
    again = TestResult.from_dict(result.to_dict())
    assert again.switch_points == result.switch_points


def test_the_tables_name_each_stop_and_mark_the_failing_hop():
    failed = _recorded(HopFailure("ssh-dead", 2, "no answer"), reached=True)
    lines = switch_point_lines([failed])
    assert lines[:2] == ["## Switch points", ""]
    assert "| 7.2.22 | `test_sweep_over_virtio_blk_kick` | 1 | vp_notify+0x0 [virtio_pci] | " \
           "nopl 0x0(%rax) | ok |" in lines, lines
    assert "| 7.2.22 | `test_sweep_over_virtio_blk_kick` | 2 | vp_notify+0x5 [virtio_pci] | " \
           "push %rbp | **ssh-dead** |" in lines, lines
    html = "\n".join(switch_point_html([failed]))
    assert "<details open><summary>2 switched hops, 1 failed" in html, html
    assert "<td class='fail'>ssh-dead</td>" in html and "vp_notify+0x5 [virtio_pci]" in html
    passed = "\n".join(switch_point_html([_recorded(None, reached=True)]))
    assert "<details><summary>2 switched hops, 0 failed" in passed, passed


def test_a_point_never_reached_is_named_from_the_plan():
    result = _recorded(HopFailure("switch-point-not-reached", 2, "not hit"), reached=False)
    row = result.switch_points[-1]
    assert (row["hop"], row["where"], row["spec"], row["steps"], row["verdict"]) == \
        (2, None, "vp_notify", 1, "switch-point-not-reached"), row
    assert any("| 2 | not reached (vp_notify +1 steps) |" in line
               for line in switch_point_lines([result])), switch_point_lines([result])


def test_no_switched_hops_no_table():
    plain = TestResult("t.py::test_x", "passed", 1.0, run="7.2.22")
    assert switch_point_lines([plain]) == [] and switch_point_html([plain]) == []
