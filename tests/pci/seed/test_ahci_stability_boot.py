"""Booting from AHCI (seed item "ahci-stability", the boot half).

The AHCI-root guest (guest-images/debian12-ahci) is cold-booted by SeaBIOS
through QEMU's AHCI on q35 (the built-in 00:1f.2), on pc (an ich9-ahci
function) and on pc behind a pci-bridge; every phase must pass, and the
firmware log must show SeaBIOS's AHCI driver at the PCI address the topology
gives the controller.  A disk with a zeroed boot sector must be reported as
stopped in the firmware phase within seconds, by the CLI a user runs; one
whose root file system has a zeroed superblock as stopped in the fsck phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.factory import GuestFactory, RunSettings
from harness.guest.diskimage import ensure_disk_image
from harness.guest.running import FIRMWARE_LOG
from harness.plan import plan_firmware
from harness.scenarios.bootstress.phases import (
    AHCI_ROOT_PHASES,
    ahci_root_phases,
    past_a_firmware_stall,
    read_uefi_console,
)
from harness.scenarios.bootstress.run import BootStress, BootStressOptions, boot_topology
from harness.topology import resolve


def _controller_address(machine: str, behind_bridge: bool) -> str:
    """Where SeaBIOS should find the AHCI controller ("bus:slot.fn"), from the
    topology's own layout: q35's built-in one is 00:1f.2; an added ich9-ahci
    sits where layout put it, on bus 01 when it is behind the (only) bridge."""
    topo = resolve(boot_topology(machine, Path("/unused"), "raw", behind_bridge))
    if topo.boot_disk is None or topo.boot_disk.controller is None:
        return "00:1f.2"
    ctrl = topo.device(topo.boot_disk.controller)
    assert ctrl.addr is not None
    bus = 1 if behind_bridge else 0
    return f"{bus:02x}:{ctrl.addr.slot:02x}.{ctrl.addr.function}"


@pytest.mark.seed("ahci-stability")
@pytest.mark.known_gap("ahci-tfes-only-seabios-stall")
@pytest.mark.parametrize(("machine", "behind_bridge"), [("q35", False), ("pc", False),
                                                        ("pc", True)],
                         ids=["q35", "pc", "pc-behind-bridge"])
def test_boot_from_ahci(harness_factory: GuestFactory, artifacts: Path, machine: str,
                        behind_bridge: bool) -> None:
    disk = ensure_disk_image()
    topology = boot_topology(machine, disk.disk, "raw", behind_bridge)
    plan = harness_factory.plan(topology, firmware_log=True)
    uefi = plan_firmware(plan).uefi  # --firmware: SeaBIOS (default), another BIOS or OVMF
    phases = ahci_root_phases(uefi)
    stress = BootStress(plan, artifacts, BootStressOptions(phases=phases, boots=1,
                                                           keep_artifacts=True), print)
    run = stress.run()
    [record] = run.records
    assert record.ok, record.describe_failure() + "\n" + (record.console_tail or "")
    assert list(record.ended_at) == [p.name for p in phases]
    # Every phase was reached, in order (above); two markers that arrive in the same
    # console read share a timestamp, so a phase may take 0.0 s but never less.
    durations = record.durations()
    assert all(d >= 0 for d in durations.values()), durations
    expected = _controller_address(machine, behind_bridge)
    if uefi:
        _assert_uefi_booted_from(artifacts / "boot-0001", expected)
        return
    firmware = (artifacts / "boot-0001" / FIRMWARE_LOG).read_text()
    assert f"AHCI controller at {expected}" in firmware, (expected, [
        line for line in firmware.splitlines() if "AHCI" in line])


def _assert_uefi_booted_from(boot_dir: Path, address: str) -> None:
    """OVMF's boot manager started a disk on the AHCI function at ADDRESS (bus:slot.fn;
    its device path names the slot and function of the last hop: Pci(0x1F,0x2))."""
    view = read_uefi_console((boot_dir / "console.log").read_text(errors="replace"))
    slot, function = (int(x, 16) for x in address.split(":")[1].split("."))
    node = f"Pci(0x{slot:X},0x{function:X})/Sata("
    assert view.handed_off and any(node in d for d in view.ahci_disks), (node, view)


@pytest.mark.seed("ahci-stability")
def test_boot_from_ahci_under_uefi(harness_factory: GuestFactory, artifacts: Path) -> None:
    # OVMF (the one that comes with this QEMU, else Debian's) boots the same disk
    # through EDK2's own AHCI driver: GRUB from EFI/BOOT/BOOTX64.EFI, then the
    # same kernel, fsck, root and SSH phases as under SeaBIOS.
    disk = ensure_disk_image()
    assert disk.uefi_loader == "EFI/BOOT/BOOTX64.EFI", disk
    plan = replace(harness_factory.plan(boot_topology("q35", disk.disk, "raw"),
                                        firmware_log=True), firmware="ovmf")
    phases = ahci_root_phases(uefi=True)
    run = BootStress(plan, artifacts, BootStressOptions(phases=phases, boots=1,
                                                        keep_artifacts=True), print).run()
    [record] = run.records
    assert record.ok, record.describe_failure() + "\n" + (record.console_tail or "")
    assert list(record.ended_at) == [p.name for p in phases]
    assert list(record.ended_at)[1:3] == ["bootloader", "load"]
    # The boot manager started the disk on q35's built-in AHCI function, 00:1f.2.
    _assert_uefi_booted_from(artifacts / "boot-0001", _controller_address("q35", False))


def _zeroed_boot_sector(tmp_path: Path) -> Path:
    """An overlay of the AHCI-root disk whose sector 0 reads as zeros."""
    base = ensure_disk_image().disk
    damaged = tmp_path / "damaged.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(damaged)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -z 0 512", str(damaged)], check=True,
                   capture_output=True)
    return damaged


@pytest.mark.smoke
@pytest.mark.seed("ahci-stability")
def test_zeroed_boot_sector_stops_in_the_firmware_phase(
        tmp_path: Path, harness_factory: GuestFactory, harness_settings: RunSettings) -> None:
    damaged = _zeroed_boot_sector(tmp_path)
    before = damaged.read_bytes()
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(tmp_path / "artifacts"))
    # The --ready deadline is far away on purpose: the verdict must come from
    # the firmware log, not from waiting for the console.
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "boot-stress", "--machine", "q35", "--boots", "3",
         "--disk", str(damaged), "--ready", "HARNESS-READY", "--ready-timeout", "600",
         "--qemu-binary", str(harness_factory.binary.path), "--accel", "tcg",
         "--timeout-multiplier", str(harness_settings.timeout_multiplier), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["boots"] == 0 and result["attempted"] == 1, result
    assert result["stopped_by"] == "failure"
    [record] = result["boot_records"]
    assert record["stopped_in"] == "firmware", record
    assert "not a bootable disk" in record["reason"], record["reason"]
    assert len(result["failures"]) == 1 and "firmware phase" in result["failures"][0]
    # Within seconds: SeaBIOS gives up at once; only QEMU start-up and the
    # firmware's own run count (generous for a loaded host).
    assert result["elapsed_s"] < 20 * harness_settings.timeout_multiplier, result["elapsed_s"]
    kept = Path(record["artifacts"])
    for name in ("firmware.log", "console.log", "qemu.cmdline", "reproduce.sh"):
        assert (kept / name).is_file(), (name, sorted(p.name for p in kept.iterdir()))
    assert "No bootable device" in (kept / "firmware.log").read_text()
    assert "FAILED: boot 1 stopped in the firmware phase" in proc.stderr, proc.stderr
    # Nothing left running, and the disk given was not written.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True,
                              check=False)
    assert leftover.stdout == "", leftover.stdout
    assert damaged.read_bytes() == before


@pytest.mark.seed("ahci-stability")
def test_damaged_root_file_system_stops_in_the_fsck_phase(
        tmp_path: Path, harness_factory: GuestFactory, artifacts: Path) -> None:
    # The root's primary superblock (1 KiB into partition 2) zeroed in an
    # overlay: the firmware, syslinux and the kernel are untouched, so the boot
    # must get as far as the initramfs and stop at e2fsck, not earlier or later.
    from harness.guest.diskimage import SECTOR, parse_mbr

    disk = ensure_disk_image()
    with open(disk.disk, "rb") as raw:
        root = parse_mbr(raw.read(SECTOR))[1]
    damaged = tmp_path / "bad-root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.disk), "-F", "raw",
                    str(damaged)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -z {root.start_lba * SECTOR + 1024} 1024", str(damaged)],
                   check=True, capture_output=True)
    plan = harness_factory.plan(boot_topology("q35", damaged, "qcow2"), firmware_log=True)
    # About the fsck phase: room for the firmware stall that is a known gap of its own.
    run = BootStress(plan, artifacts, BootStressOptions(
        phases=past_a_firmware_stall(AHCI_ROOT_PHASES), boots=1,
        stalls_stop=False), print).run()
    [record] = run.records
    assert record.stopped_in == "fsck", (record.stopped_in, record.reason, record.console_tail)
    assert record.reason is not None and "e2fsck" in record.reason, record.reason
    assert list(record.ended_at) == ["firmware", "bootloader", "load", "kernel"]
    assert run.stopped_by == "failure"
