"""Three views of one running guest: what the model, QEMU and the guest say.

`collect_views(guest)` is the single way a test or a verb collects them: the model
from the topology (expect.py), the QEMU view from `query-pci` plus the QOM
hotplug handlers, the guest view from GUEST_DUMP_SCRIPT run over SSH.  The
result is plain data: `differences()` is the three-way verdict of `compare`,
and two collections taken around a hotplug or a migration are diffed per view
with `changes(before, after)`.

Why the topology is a parameter: after a hotplug the machine is no longer the
one the guest was launched with, so the caller passes the topology that now
describes it (the launch topology plus the new device) and the model follows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.guest.running import Guest
from harness.topology import Topology
from harness.topology import expected_view as model_view
from harness.views.compare import Change, Difference, compare, diff_views
from harness.views.guest import GUEST_DUMP_SCRIPT, GUEST_LSPCI_SCRIPT, parse_guest_view
from harness.views.pciview import PciView
from harness.views.qemu import collect_qemu_view

__all__ = ["GUEST_DUMP_SECONDS", "ThreeViews", "ViewChanges", "changes", "collect_guest_view",
           "collect_views"]

GUEST_DUMP_SECONDS = 60.0  # TCG seconds for the sysfs + lspci dump over SSH


@dataclass(frozen=True)
class ThreeViews:
    """The model, QEMU and guest views of one machine at one moment."""

    model: PciView
    qemu: PciView
    guest: PciView
    guest_dump: str = field(default="", compare=False, repr=False)  # raw script output
    seconds: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def differences(self) -> list[Difference]:
        """Every field where the views that know it disagree ([] = all three agree)."""
        return compare(self.model, self.qemu, self.guest)

    @property
    def function_count(self) -> int:
        """PCI functions seen by at least one view (each is compared)."""
        return len({f.path for v in (self.model, self.qemu, self.guest) for f in v.functions})

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "qemu": self.qemu.to_dict(),
                "guest": self.guest.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThreeViews:
        return cls(model=PciView.from_dict(data["model"]), qemu=PciView.from_dict(data["qemu"]),
                   guest=PciView.from_dict(data["guest"]))

    def save(self, directory: Path, name: str = "views") -> Path:
        """Write NAME.json (the three views) and NAME-guest-dump.txt (sysfs and
        `lspci -vvv -nn` as the guest printed them) for a person to read later."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        if self.guest_dump:
            (directory / f"{name}-guest-dump.txt").write_text(self.guest_dump)
        return path


@dataclass(frozen=True)
class ViewChanges:
    """What changed between two collections of the views, per view."""

    model: list[Change]
    qemu: list[Change]
    guest: list[Change]

    def all(self) -> list[tuple[str, Change]]:
        return ([("model", c) for c in self.model] + [("qemu", c) for c in self.qemu]
                + [("guest", c) for c in self.guest])

    def __bool__(self) -> bool:
        return bool(self.model or self.qemu or self.guest)


def changes(before: ThreeViews, after: ThreeViews, *,
            ignore: tuple[str, ...] = ()) -> ViewChanges:
    """Per-view before/after diff (diff_views); fields named in `ignore`
    (e.g. "interrupt_line" or "bars[4].address") are left out."""
    def diff(a: PciView, b: PciView) -> list[Change]:
        return [c for c in diff_views(a, b) if c.field not in ignore]

    return ViewChanges(model=diff(before.model, after.model), qemu=diff(before.qemu, after.qemu),
                       guest=diff(before.guest, after.guest))


def collect_guest_view(guest: Guest, deadline: Deadline | None = None, *,
                       lspci: bool = True) -> tuple[PciView, str]:
    """Run GUEST_DUMP_SCRIPT in the guest (busybox sh) and parse it: (view, raw text).

    `lspci`: append `lspci -vvv -nn` to the raw text for people (about 0.5 s
    under TCG); the verdict never reads it.
    """
    deadline = deadline or Deadline(GUEST_DUMP_SECONDS, "guest PCI dump over SSH")
    script = GUEST_DUMP_SCRIPT + (GUEST_LSPCI_SCRIPT if lspci else "")
    text = guest.succeed(script, timeout=max(deadline.remaining(), 1.0))
    view = parse_guest_view(text)
    if not view.functions:
        raise HarnessError("the guest PCI dump listed no PCI function",
                           fix="read the dump in the artifacts; /sys/bus/pci may be missing",
                           tail=text[-2000:])
    return view, text


def collect_views(guest: Guest, topology: Topology | None = None, *,
             deadline: Deadline | None = None, lspci: bool = True) -> ThreeViews:
    """Collect the three views of a booted guest.

    `topology`: what the machine is now (default: the topology it was launched
    with).  `lspci=False` saves about half a second when no person will read
    the raw dump (e.g. many before/after collections).  The QEMU view is taken after the guest view so that both see the BAR
    addresses and bridge windows the guest's kernel has settled on.
    """
    if guest.qmp is None:
        raise HarnessError(f"guest {guest.name!r} has no QMP connection (not launched?)")
    guest.check_alive("collecting the three views")
    t0 = time.monotonic()
    # The launch topology's model was derived when the guest was rendered; a
    # changed machine (after a hotplug) is modelled from the topology given.
    model = guest.rendered.expected if topology is None else model_view(topology)
    t1 = time.monotonic()
    guest_view, text = collect_guest_view(guest, deadline, lspci=lspci)
    t2 = time.monotonic()
    qemu = collect_qemu_view(guest.qmp, guest.root_bus_hotplug())
    t3 = time.monotonic()
    return ThreeViews(model=model, qemu=qemu, guest=guest_view, guest_dump=text,
                      seconds={"model": t1 - t0, "guest": t2 - t1, "qemu": t3 - t2})
