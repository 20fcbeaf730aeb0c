"""What `explore --hotplug` and `--migrate` do to a drawn machine after its cold check.

--hotplug: every bus `where` says takes device_add (by the model's own
mechanism, read from QEMU's QOM) gets one plug and unplug of a NIC at its
first free slot, checked by hotplug/stress.checked_cycle: the three views after
each step, the NIC's MAC, the console.  --migrate: one hop to a destination
(the same QEMU, or --dst-qemu on the machine type both share), then the
destination's three views must agree and its QEMU and guest views must equal
the source's (BAR addresses and IRQ lines may move only with the guest's own
reassignment, which a migration never does).

Each problem is a dict like check.py's, so signatures and shrinking work alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.guest.running import Guest
from harness.qemu.binary import QemuBinary
from harness.scenarios.hotplug.plug import Hotplugger, seeded_mac
from harness.scenarios.hotplug.spec import PlugSpec
from harness.scenarios.hotplug.stress import StepFailed, checked_cycle
from harness.scenarios.migration.hop import (
    destination_plan,
    migrate,
    pin_machine,
    start_destination,
)
from harness.scenarios.threeview import ThreeViews, changes, collect_views
from harness.scenarios.where import where

HOTPLUG_DRIVER = "virtio-net-pci"
MAX_HOTPLUG_BUSES = 4


def hotplug_problems(guest: Guest, artifacts: Path, seed: int,
                     say: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """Plug and unplug a NIC on each hot-pluggable bus (at most MAX_HOTPLUG_BUSES)."""
    assert guest.qmp is not None
    answer = where(guest.qmp, HOTPLUG_DRIVER, hotplug_only=True,
                   root_hotplug=guest.root_bus_hotplug())
    hp = Hotplugger(guest, artifacts / "hotplug")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n, bus in enumerate(answer.buses[:MAX_HOTPLUG_BUSES]):
        spec = PlugSpec(f"hp{n}", HOTPLUG_DRIVER, bus.bus, bus.free_slots[0],
                        mac=seeded_mac(rng))
        where_text = f"{HOTPLUG_DRIVER} on {bus.bus} slot {bus.free_slots[0]:#x} ({bus.hotplug})"
        try:
            report = checked_cycle(guest, hp, spec, seed)
        except StepFailed as exc:
            out.append({"device": spec.id, "driver": f"hotplug:{bus.hotplug}",
                        "field": exc.step, "text": f"{where_text}: {exc.message}"})
            break  # the machine's state is unknown after a step that did not finish
        out += [{"device": spec.id, "driver": f"hotplug:{bus.hotplug}", "field": f.step,
                 "text": f"{where_text}: {f.step}: {f.what}"} for f in report.failures]
        say(f"  hotplug: {where_text}: plugged, unplugged, "
            f"{len(report.failures)} problem(s)")
    if not answer.buses:
        say("  hotplug: no bus of this machine takes device_add")
    return out


def migrate_problems(src: Guest, before: ThreeViews, artifacts: Path,
                     dst_binary: QemuBinary | None,
                     say: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """One hop; the destination's views against themselves and the source's."""
    plan = destination_plan(src, dst_binary)
    if dst_binary is not None:
        plan = pin_machine(plan, dst_binary)
    dst: Guest | None = None
    try:
        dst = start_destination(src, artifacts, "dst", 1, plan=plan)
        migrate(src, dst, 1)
        after = collect_views(dst, lspci=False)
        say(f"  migrated to {dst.plan.binary.version} ({dst.plan.topology.machine})")
    except HarnessError as exc:
        return [{"device": "", "driver": "migration", "field": type(exc).__name__,
                 "text": f"migration: {exc.message}"}]
    finally:
        if dst is not None:
            dst.shutdown()
    out = [{"device": d.device, "driver": "migration", "field": d.field,
            "text": f"after migration: {d}"} for d in after.differences()]
    moved = changes(before, after)
    out += [{"device": c.device, "driver": "migration", "field": f"{view}:{c.field}",
             "text": f"migration changed the {view} view: {c}"}
            for view, c in moved.all() if view != "model"]
    return out
