"""threeview: ThreeViews and changes() on real recorded views (no QEMU)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.scenarios.threeview import ThreeViews, changes
from harness.topology import default_topology, expected_view, load_topology
from harness.views import parse_guest_view, parse_qemu_view

DATA = Path(__file__).parent / "data" / "guest"
ROOT = Path(__file__).parents[2]


def recorded(name: str) -> ThreeViews:
    rec: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    topo_name = rec["topology"]
    topo = (default_topology(topo_name) if topo_name in ("pc", "q35")
            else load_topology(ROOT / topo_name))
    return ThreeViews(model=expected_view(topo),
                      qemu=parse_qemu_view(rec["query-pci"], rec["qom"]),
                      guest=parse_guest_view(rec["guest_dump"]), guest_dump=rec["guest_dump"])


def test_recorded_guest_has_no_differences_and_counts_functions() -> None:
    views = recorded("q35-pcie-to-pci")
    assert views.differences() == []
    assert views.function_count == len(views.qemu.functions) == 16


def test_json_round_trip_and_save(tmp_path: Path) -> None:
    views = recorded("default-pc")
    path = views.save(tmp_path, "before")
    assert ThreeViews.from_dict(json.loads(path.read_text())) == views
    assert (tmp_path / "before-guest-dump.txt").read_text() == views.guest_dump


def test_changes_name_the_view_and_the_field() -> None:
    before = recorded("q35-link-speeds")
    gone = before.guest.functions[-1]
    nic = next(f for f in before.qemu.functions if f.id == "nic1")
    after = replace(
        before,
        guest=replace(before.guest, functions=before.guest.functions[:-1]),
        qemu=replace(before.qemu, functions=tuple(
            replace(f, interrupt_line=99) if f is nic else f for f in before.qemu.functions)))
    diff = changes(before, after)
    assert diff.model == []
    assert [(c.device, c.field, c.before, c.after) for c in diff.guest] == [
        ("/".join(gone.path), "present", True, False)]
    assert [(c.device, c.field, c.after) for c in diff.qemu] == [("nic1", "interrupt_line", 99)]
    assert not changes(before, after, ignore=("interrupt_line", "present"))
    assert not changes(before, before)
