"""step_problems: a hotplug step must change the views by exactly what the model derives."""

from __future__ import annotations

from dataclasses import replace

from harness.scenarios.hotplug import PlugSpec, step_problems
from harness.stats import latency as percentiles
from harness.topology import expected_view, topology_from_dict
from harness.views import PciFunction, PciView, diff_snapshots
from harness.views.threeview import ThreeViews

TOPO = topology_from_dict({"machine": "q35", "device": [
    {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
]})
NEW = PlugSpec("hd1", "virtio-blk-pci", "rp1", 0)
PATH = ("02.0", "00.0")


def _views(model: PciView, *, guest_extra: PciFunction | None = None,
           qemu_drop: tuple[str, ...] | None = None) -> ThreeViews:
    """QEMU and guest views made from the model (ids kept for QEMU, dropped for the guest)."""
    qemu = PciView("qemu", tuple(f for f in model.functions if f.path != qemu_drop))
    guest_funcs = tuple(replace(f, id=None) for f in model.functions)
    if guest_extra is not None:
        guest_funcs += (guest_extra,)
    return ThreeViews(model=model, qemu=qemu, guest=PciView("guest", guest_funcs))


def _after_model() -> PciView:
    return expected_view(replace(TOPO, devices=TOPO.devices + (NEW.device(),)))


def test_a_plug_that_adds_exactly_the_device_and_the_port_link_is_clean():
    before, after = _views(expected_view(TOPO)), _views(_after_model())
    model_changes = {(c.device, c.field) for c in diff_snapshots(before.model, after.model)}
    # The model itself predicts the port's link status change along with the device.
    assert ("hd1", "present") in model_changes
    assert any(dev == "rp1" and field.startswith("link") for dev, field in model_changes)
    assert step_problems(before, after, PATH, added=True) == []
    assert step_problems(after, before, PATH, added=False) == []


def test_a_view_that_misses_the_new_device_is_reported():
    before = _views(expected_view(TOPO))
    after = _views(_after_model(), qemu_drop=PATH)
    problems = step_problems(before, after, PATH, added=True)
    assert any(p.startswith("qemu view: 02.0/00.0 should be added") for p in problems), problems


def test_an_unpredicted_change_elsewhere_is_reported():
    before = _views(expected_view(TOPO))
    stray = PciFunction(path=("05.0",), vendor=0x8086, device=0x10D3)
    after = _views(_after_model(), guest_extra=stray)
    problems = step_problems(before, after, PATH, added=True)
    assert problems == [("guest view: unexpected change 05.0: present: False -> True "
                         "(the model predicts none)")], problems


def test_views_that_disagree_on_the_new_function_are_reported():
    before = _views(expected_view(TOPO))
    after = _views(_after_model())
    wrong = tuple(replace(f, device=0x1001) if f.path == PATH else f
                  for f in after.guest.functions)
    after = replace(after, guest=PciView("guest", wrong))
    problems = step_problems(before, after, PATH, added=True)
    assert any("disagree on the new function" in p and "device" in p for p in problems), problems


def test_percentiles_nearest_rank():
    assert percentiles([]) == {"p50": None, "p95": None}
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentiles(values) == {"p50": 10.5, "p95": 19.0}
    assert percentiles([0.3]) == {"p50": 0.3, "p95": 0.3}
