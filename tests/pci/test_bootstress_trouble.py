"""boot-stress stops a boot on kernel trouble written during boot and during the
ssh phase (positive controls on a real QEMU: the scans are seen to fire)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from harness.factory import GuestFactory
from harness.guest.diskimage import ensure_disk_image
from harness.scenarios.bootstress.phases import AHCI_ROOT_PHASES, past_a_firmware_stall
from harness.scenarios.bootstress.run import BootStress, BootStressOptions, boot_topology

pytestmark = pytest.mark.smoke

NOBODY_CARED = 'irq 11: nobody cared (try booting with the "irqpoll" option)'
WARNING = "WARNING: CPU: 0 PID: 1 at drivers/ata/libahci.c:1 written by the harness"


def _boot(harness_factory: GuestFactory, artifacts: Path, kernel_args: tuple[str, ...] = (),
          ssh_commands: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    disk = ensure_disk_image()
    plan = harness_factory.plan(boot_topology("q35", disk.disk, "raw", False),
                                firmware_log=True, kernel_args=kernel_args)
    run = BootStress(plan, artifacts, BootStressOptions(
        # About the kernel log: room for the firmware stall that is a known gap of its own.
        phases=past_a_firmware_stall(AHCI_ROOT_PHASES), boots=1, stalls_stop=False,
        ssh_commands=ssh_commands),
        print).run()
    [record] = run.records
    return record.stopped_in, record.reason


def test_trouble_written_during_boot_stops_it(harness_factory: GuestFactory,
                                              artifacts: Path) -> None:
    line = base64.b64encode(f"<3>{NOBODY_CARED}\n".encode()).decode()
    stopped_in, reason = _boot(harness_factory, artifacts, kernel_args=(f"harness.kmsg={line}",))
    assert stopped_in == "userspace" and reason is not None and NOBODY_CARED in reason, \
        (stopped_in, reason)


def test_trouble_written_in_the_ssh_phase_stops_it(harness_factory: GuestFactory,
                                                   artifacts: Path) -> None:
    # Level 6 (info) stays below the console's log level: only dmesg has it.
    stopped_in, reason = _boot(harness_factory, artifacts,
                               ssh_commands=(f"echo '<6>{WARNING}' >/dev/kmsg",))
    assert stopped_in == "ssh" and reason is not None and WARNING in reason, (stopped_in, reason)
    assert reason.startswith("kernel trouble: kernel warning:"), reason


def test_a_clean_boot_passes_the_scans(harness_factory: GuestFactory, artifacts: Path) -> None:
    stopped_in, reason = _boot(harness_factory, artifacts, ssh_commands=("true",))
    assert (stopped_in, reason) == (None, None)
