"""What the INT#x stress counts and serves: interrupt counters parsed from the
guest (/proc/interrupts) and from QEMU (HMP `info irq`)."""

from __future__ import annotations

import re

__all__ = ["CHUNK", "counter_delta", "parse_info_irq", "parse_proc_interrupts"]

CHUNK = 1024 * 1024           # bytes per disk write/read-back and per network download


# --------------------------------------------------------------------------- counters

_PROC_IRQ = re.compile(r"^\s*(\d+):((?:\s+\d+)+)\s+(\S+)\s+(\S+)\s+(.*)$")


def parse_proc_interrupts(text: str) -> dict[int, tuple[int, str, str]]:
    """/proc/interrupts -> {irq: (count summed over CPUs, chip, actions)}."""
    out = {}
    for line in text.splitlines():
        m = _PROC_IRQ.match(line)
        if m:
            out[int(m.group(1))] = (sum(int(x) for x in m.group(2).split()), m.group(3),
                                    m.group(5).strip())
    return out


def parse_info_irq(text: str, controller: str = "ioapic") -> dict[int, int]:
    """HMP `info irq` -> {pin: count} of one interrupt controller."""
    out: dict[int, int] = {}
    section = None
    for line in text.splitlines():
        head = re.match(r"IRQ statistics for (\S+):", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"\s*(\d+):\s*(\d+)", line)
        if m and section == controller:
            out[int(m.group(1))] = int(m.group(2))
    return out


def counter_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after
            if after.get(k, 0) != before.get(k, 0)}
