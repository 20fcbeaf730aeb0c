"""step_problems: a hotplug step must change the views by exactly what the model derives.

The views are what a real QEMU 7.2 and a real guest showed around one hotplug
(tests/unit/data/hotplug/q35-rp1.json, recorded by record_hotplug.py: a
virtio-blk-pci plugged into an empty root port and unplugged again).  Only the
model is computed here; each bad case changes a real view the way a broken
QEMU or guest would.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.scenarios.hotplug.check import step_problems
from harness.scenarios.threeview import ThreeViews
from harness.stats import latency as percentiles
from harness.views import PciFunction, PciView

RECORDING = json.loads((Path(__file__).parent / "data" / "hotplug" / "q35-rp1.json").read_text())
PATH = tuple(RECORDING["path"])
PORT = ("02.0",)


def recorded(step: str) -> ThreeViews:
    return ThreeViews.from_dict(RECORDING[step])


def with_function(views: ThreeViews, which: str, path: tuple[str, ...], **values: object
                  ) -> ThreeViews:
    """VIEWS with the function at PATH in view WHICH ("qemu"/"guest") changed."""
    view: PciView = getattr(views, which)
    funcs = tuple(replace(f, **values) if f.path == path else f  # type: ignore[arg-type]
                  for f in view.functions)
    return replace(views, **{which: replace(view, functions=funcs)})


def test_the_recorded_plug_and_unplug_are_clean() -> None:
    before, plugged, unplugged = recorded("before"), recorded("plugged"), recorded("unplugged")
    # The model predicts the port's link going from its own maximum to the
    # endpoint's 2.5 GT/s x1, and the real guest showed exactly that.
    guest_port = (plugged.guest.by_path()[PORT].link_speed, before.guest.by_path()[PORT].link_speed)
    assert guest_port == (2.5, 16.0), guest_port
    assert step_problems(before, plugged, PATH, added=True) == []
    assert step_problems(plugged, unplugged, PATH, added=False) == []


def test_a_predicted_link_change_that_did_not_happen_is_reported() -> None:
    before, plugged = recorded("before"), recorded("plugged")
    port = before.guest.by_path()[PORT]
    stuck = with_function(plugged, "guest", PORT, link_speed=port.link_speed,
                          link_width=port.link_width)
    problems = step_problems(before, stuck, PATH, added=True)
    assert ("guest view: predicted change 02.0: link_speed: 16.0 -> 2.5 did not happen "
            "(the view shows no change)") in problems, problems
    assert ("guest view: predicted change 02.0: link_width: 32 -> 1 did not happen "
            "(the view shows no change)") in problems, problems


def test_a_predicted_change_whose_value_became_unknown_is_reported() -> None:
    """The guest's decoder did not know the new LnkSta code: link_speed is None
    after the plug, where the model predicts 2.5; that is not a change to skip."""
    before, plugged = recorded("before"), recorded("plugged")
    unknown = with_function(plugged, "guest", PORT, link_speed=None)
    problems = step_problems(before, unknown, PATH, added=True)
    assert ("guest view: predicted change 02.0: link_speed: 16.0 -> 2.5 did not happen "
            "(the view shows 16.0 -> None)") in problems, problems


def test_a_predicted_change_to_another_value_is_reported_and_views_disagree() -> None:
    before, plugged = recorded("before"), recorded("plugged")
    wrong = with_function(plugged, "guest", PORT, link_speed=5.0)
    problems = step_problems(before, wrong, PATH, added=True)
    assert ("guest view: predicted change 02.0: link_speed: 16.0 -> 2.5 did not happen "
            "(the view shows 16.0 -> 5.0)") in problems, problems
    assert ("three views disagree after the plug: rp1: link_speed: model=2.5 qemu=None "
            "guest=5.0") in problems, problems


def test_an_unplug_that_leaves_the_link_up_is_reported() -> None:
    plugged, unplugged = recorded("plugged"), recorded("unplugged")
    up = plugged.guest.by_path()[PORT]
    stuck = with_function(unplugged, "guest", PORT, link_speed=up.link_speed,
                          link_width=up.link_width)
    problems = step_problems(plugged, stuck, PATH, added=False)
    assert ("guest view: predicted change 02.0: link_speed: 2.5 -> 16.0 did not happen "
            "(the view shows no change)") in problems, problems


def test_a_view_that_misses_the_new_device_is_reported() -> None:
    before, plugged = recorded("before"), recorded("plugged")
    missing = replace(plugged, qemu=replace(plugged.qemu, functions=tuple(
        f for f in plugged.qemu.functions if f.path != PATH)))
    problems = step_problems(before, missing, PATH, added=True)
    assert any(p.startswith("qemu view: 02.0/00.0 should be added") for p in problems), problems


def test_an_unpredicted_change_elsewhere_is_reported() -> None:
    before, plugged = recorded("before"), recorded("plugged")
    stray = PciFunction(path=("05.0",), vendor=0x8086, device=0x10D3)
    extra = replace(plugged, guest=replace(plugged.guest,
                                           functions=plugged.guest.functions + (stray,)))
    problems = step_problems(before, extra, PATH, added=True)
    assert problems == [
        "guest view: unexpected change 05.0: present: False -> True (the model predicts none)",
        "three views disagree after the plug: 05.0: present: model=False qemu=False guest=True",
    ], problems


def test_views_that_disagree_on_the_new_function_are_reported() -> None:
    before, plugged = recorded("before"), recorded("plugged")
    wrong = with_function(plugged, "guest", PATH, device=0x1001)
    problems = step_problems(before, wrong, PATH, added=True)
    assert any("disagree on the new function" in p and "device" in p for p in problems), problems


def test_percentiles_nearest_rank():
    assert percentiles([]) == {"p50": None, "p95": None}
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentiles(values) == {"p50": 10.5, "p95": 19.0}
    assert percentiles([0.3]) == {"p50": 0.3, "p95": 0.3}
