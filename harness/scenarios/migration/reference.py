"""The PCI state a ping-pong run must keep across every hop.

Nothing may change across a hop: BAR addresses, bus numbers, windows, link
state, bound drivers and hotplug handlers are all device state that migration
carries (none of the compared fields is volatile), so no field is ignored.  The
guest view is compared with the one reference; the QEMU view with what the same
QEMU binary said before, because another QEMU version may describe the same
machine in other words (its QOM hotplug handlers): the first hop onto a binary
records how, as a note, and every later hop onto it must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from harness.guest.running import Guest
from harness.progress import Progress
from harness.scenarios.migration.watch import HopFailure
from harness.scenarios.threeview import ThreeViews, changes
from harness.views.compare import Change
from harness.views.pciview import PciView

__all__ = ["PciReference"]


class PciReference:
    """The three views taken at boot (or after a deliberate change such as a
    hot-plug), and how each QEMU binary of the run describes that state."""

    def __init__(self, views: ThreeViews, guest: Guest, progress: Progress):
        self.progress = progress
        self.first = guest.plan.binary
        self.machine = guest.plan.topology.machine
        self.notes: list[str] = []   # how another QEMU version describes the state
        self.views = views
        self._qemu: dict[str, PciView] = {str(guest.plan.binary.path): views.qemu}

    def reset(self, views: ThreeViews, guest: Guest) -> None:
        """`views` (of `guest`) is now what every later hop must preserve."""
        self.views = views
        self._qemu = {str(guest.plan.binary.path): views.qemu}

    def check(self, number: int, dst: Guest, after: ThreeViews) -> None:
        """HopFailure("pci-state-changed") when hop `number` changed the state."""
        binary = str(dst.plan.binary.path)
        qemu_ref = self._qemu.get(binary)
        if qemu_ref is None:
            self._note(number, dst, changes(self.views, after).qemu)
            self._qemu[binary] = qemu_ref = after.qemu
        diff = changes(replace(self.views, qemu=qemu_ref), after)
        if diff:
            raise HopFailure("pci-state-changed", number,
                             "the PCI state changed across the hop: "
                             + "; ".join(f"{view} view: {c}" for view, c in diff.all()[:8]),
                             process=dst.name)

    def _note(self, number: int, dst: Guest, differences: Sequence[Change]) -> None:
        if not differences:
            return
        note = (f"QEMU {dst.plan.binary.version} ({dst.name}, hop {number}) reports the "
                f"migrated machine ({self.machine}) differently from QEMU "
                f"{self.first.version}: " + "; ".join(str(c) for c in differences[:8]))
        self.notes.append(note)
        self.progress(note)
