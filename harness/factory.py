"""The one place guests come from: the CLI verbs and the pytest fixtures both
ask a `GuestFactory`, so they share the image cache, the accelerator verdict
and (with issue 9) the snapshot cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.deadline import set_timeout_scale
from harness.errors import QemuExited, UserError
from harness.guest.image import GuestImage, ensure_image
from harness.guest.running import Guest, LaunchPlan
from harness.options import RunSettings
from harness.progress import Progress, stderr_progress
from harness.qemu.accel import Accel, ProbeBoot, announce, resolve_accel
from harness.qemu.binary import QemuBinary, find_qemu
from harness.qemu.facts import KERNEL_BOOT_MIN_MACHINE, machine_type_version
from harness.qemu.firmware import Firmware, resolve_firmware
from harness.qemu.probe import ProbedFacts, probed_facts
from harness.snapshot import SnapshotCache
from harness.topology import Topology
from harness.topology.refusal import attribute_refusal

__all__ = ["GuestFactory", "RunSettings", "probe_boot"]



def probe_boot(image: GuestImage) -> ProbeBoot:
    """The guest's own kernel, handed to the KVM probe (harness.qemu knows no guests)."""
    return ProbeBoot(kernel=image.vmlinux, initrd=image.initrd, cmdline=image.cmdline_base,
                     ready_marker="HARNESS-INIT", key=image.key)


def pin_alias(topology: Topology, facts: ProbedFacts) -> Topology:
    """TOPOLOGY with its machine alias ("q35", "pc") replaced by the versioned type
    it stands for on this binary (query-machines): the model then applies that
    type's compat rules (the same 10.0 binary builds pc-q35-7.2 and pc-q35-10.0
    differently), the snapshot key names it, and a migration destination of
    another QEMU version gets the very machine the source ran."""
    pinned = facts.resolve_alias(topology.machine)
    return topology if pinned == topology.machine else replace(topology, machine=pinned)


def check_kernel_boot(topology: Topology) -> None:
    """Machine types before 4.0 cannot boot the guest's kernel (no PVH): refuse
    before QEMU does with "linux kernel too old to load a ram disk"."""
    version = machine_type_version(topology.machine)
    if topology.boot_disk is None and version is not None \
            and version < KERNEL_BOOT_MIN_MACHINE:
        raise UserError(f"machine type {topology.machine} cannot boot the harness's guest "
                        "kernel: -kernel vmlinux boots through PVH, which machine types "
                        "before 4.0 turn off",
                        fix='use machine = "q35", "pc" or a versioned type from 4.0 on '
                            "(or a boot disk, which the firmware boots)")


class GuestFactory:
    """Resolves binary, image and accelerator once; then launches guests."""

    def __init__(self, settings: RunSettings, progress: Progress | None = None,
                 accel: Accel | None = None, announce_accel: bool = True):
        self.settings = settings
        self.progress = progress or stderr_progress
        self.binary: QemuBinary = find_qemu(settings.qemu_binary)
        # A --firmware this QEMU cannot use is bad input before any image or guest work.
        self.firmware: Firmware = resolve_firmware(settings.firmware, self.binary.path,
                                                   self.binary.given)
        self.image: GuestImage = ensure_image(progress=lambda m: self.progress(f"image: {m}"))
        self.accel: Accel = accel or resolve_accel(settings.accel, self.binary,
                                                     probe_boot(self.image))
        if announce_accel and accel is None:
            announce(self.accel)
        set_timeout_scale(self.accel.timeout_factor * settings.timeout_multiplier)
        self.snapshots = SnapshotCache(self.progress) if settings.snapshot else None

    def plan(self, topology: Topology, **overrides: Any) -> LaunchPlan:
        """The launch plan of TOPOLOGY on this binary, its machine alias pinned."""
        self.binary.check_machine(topology.machine)
        if overrides.get("boot_guest", True):
            check_kernel_boot(topology)
        return LaunchPlan(binary=self.binary, accel=self.accel, image=self.image,
                          topology=pin_alias(topology, probed_facts(self.binary)),
                          firmware=self.settings.firmware, **overrides)

    def launch(self, topology: Topology, artifacts: Path, name: str = "guest",
               **overrides: Any) -> Guest:
        """A ready guest (SSH works): restored from a snapshot when the settings
        allow and one exists, else booted cold.  The caller shuts it down."""
        plan = self.plan(topology, **overrides)
        try:
            if self.snapshots is None:
                return Guest(plan, artifacts, name=name).launch()
            return self.snapshots.launch(plan, artifacts, name)
        except QemuExited as exc:
            refused = attribute_refusal(topology, exc)  # in the topology's words
            if refused is exc:
                raise
            raise refused from exc

    @contextlib.contextmanager
    def guest(self, topology: Topology, artifacts: Path, name: str = "guest",
              **overrides: Any) -> Iterator[Guest]:
        """A ready guest for the duration of the `with` block."""
        guest = self.launch(topology, artifacts, name, **overrides)
        try:
            yield guest
        finally:
            guest.shutdown()
