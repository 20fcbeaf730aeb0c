"""kernel_trouble names each kind of kernel trouble from the lines Linux 6.1 prints."""

from __future__ import annotations

import pytest

from harness.guest.console import kernel_trouble, trouble_kind

# (kind the scan must name, a line as the kernel prints it on the console)
TROUBLE_LINES = [
    ("kernel panic", "[   70.1] Kernel panic - not syncing: Fatal exception"),
    ("oops", "[   70.1] Oops: 0000 [#1] PREEMPT SMP NOPTI"),
    ("oops", "[   70.1] BUG: unable to handle page fault for address: ffffa0a0c0000000"),
    ("general protection fault",
     ("[   70.1] general protection fault, probably for non-canonical address "
     "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI")),
    ("general protection fault",
     ("kmsg: traps: sh[231] general protection fault ip:55d0c0a4 sp:7ffd9e10 error:0 in "
     "busybox[55d0c000+a6000]")),
    ("hung task", "[  245.3] INFO: task kworker/0:2:89 blocked for more than 120 seconds."),
    ("RCU stall", "[  101.0] rcu: INFO: rcu_preempt self-detected stall on CPU"),
    ("RCU stall", "[  101.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"),
    ("BUG", "[   88.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:231]"),
    ("I/O error",
     "[   12.5] blk_update_request: I/O error, dev vdb, sector 2048 op 0x1:(WRITE) flags 0x800"),
    ("I/O error", "[   12.5] Buffer I/O error on dev vdb, logical block 0, async page read"),
    ("IRQ nobody cared", "[   33.0] irq 11: nobody cared (try booting with the \"irqpoll\" option)"),
    ("IRQ nobody cared", "[   33.0] Disabling IRQ #11"),
    ("user process fault",
     "kmsg: sh[231]: segfault at 10 ip 000055d0c0a4 sp 00007ffd9e10 error 4 in busybox"),
    ("kernel warning", "[    9.9] WARNING: CPU: 0 PID: 89 at drivers/pci/hotplug/pciehp_hpc.c:77"),
    ("call trace", "[    9.9] Call Trace:"),
    ("libata error", "[   12.0] ata1.00: exception Emask 0x0 SAct 0x0 SErr 0x0 action 0x6 frozen"),
    ("libata error", "[   12.0] ata1: SError: { PHYRdyChg CommWake }"),
    ("libata error", "[   12.0] ata1.00: status: { DRDY ERR }"),
    ("libata error", "[   12.0] ata1.00: failed command: WRITE FPDMA QUEUED"),
    ("libata error", "[   12.0] ata1: hard resetting link"),
    ("file system error",
     "[   20.0] EXT4-fs error (device sda2): ext4_lookup:1855: inode #2: comm ls: deleted inode"),
    ("file system error", "[   20.0] EXT4-fs (sda2): Remounting filesystem read-only"),
]

ORDINARY_LINES = [
    "[    0.012000] tsc: Unable to calibrate against PIT",
    "HARNESS-READY 2.03",
    "guest# harness_restored 1795990946 a34e2ff 52:54:00:e3:ff:b9",
    "[    4.1] pcieport 0000:00:02.0: pciehp: Slot(0): Attention button pressed",
    "[    4.2] virtio_blk virtio0: [vda] 131072 512-byte logical blocks (67.1 MB/64.0 MiB)",
    "[    1.9] EXT4-fs (sda2): mounted filesystem with ordered data mode. Quota mode: none.",
    "[    1.2] ata1: SATA link up 1.5 Gbps (SStatus 113 SControl 300)",
    "[    1.2] ata1.00: configured for UDMA/100",
]


@pytest.mark.parametrize(("kind", "line"), TROUBLE_LINES, ids=[k for k, _ in TROUBLE_LINES])
def test_each_kind_of_trouble_is_named_with_its_text(kind: str, line: str) -> None:
    assert trouble_kind(line) == kind
    assert kernel_trouble(f"HARNESS-READY 2.0\r\n{line}\r\n") == [f"{kind}: {line}"]


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_lines_are_not_trouble(line: str) -> None:
    assert trouble_kind(line) is None
    assert kernel_trouble(line) == []


@pytest.mark.parametrize(("kind", "line"), TROUBLE_LINES, ids=[k for k, _ in TROUBLE_LINES])
def test_boot_stress_stops_on_every_kind_of_trouble(kind: str, line: str) -> None:
    """One trouble list: boot-stress's stop pattern holds every kind the console scan knows."""
    from harness.scenarios.bootstress.phases import STOP_LINE

    match = STOP_LINE.search(f"HARNESS-KERNEL 1.0\r\n{line}\r\nnext")
    assert match is not None, f"boot-stress would not stop on {kind}: {line!r}"
    assert match.group(0).strip() == line, (match.group(0), line)


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_boot_stress_passes_ordinary_lines(line: str) -> None:
    from harness.scenarios.bootstress.phases import STOP_LINE

    assert STOP_LINE.search(f"{line}\r\n") is None
