"""The RAM comparison at the switchover, shown red on a real QEMU (issue 23
point 3): one byte of the loaded, paused destination's RAM is changed from the
host (QEMU's `gpa2hva` gives where that guest-physical address lives in the
destination QEMU's address space; /proc/PID/mem writes it), and the hop's
verdict must be lost-dirty-pages naming that guest-physical page and offset."""

from __future__ import annotations

import re

import pytest

from harness.scenarios.migration.pingpong import PingPong, PingPongOptions
from harness.topology import topology_from_dict

pytestmark = pytest.mark.smoke

PAGE_GPA = 0x1234000    # ~18 MiB: inside every guest's RAM, below any PCI hole
OFFSET = 0x5A7          # the byte within that page


def flip_byte(guest, gpa: int) -> tuple[int, int]:
    """Invert the byte at guest-physical `gpa` of a (paused) guest from the host;
    (old, new) value."""
    answer = guest.qmp.hmp(f"gpa2hva {gpa:#x}")
    found = re.search(r"is (0x[0-9a-f]+)", answer)
    if found is None:
        raise AssertionError(f"gpa2hva {gpa:#x} answered {answer!r}")
    hva = int(found.group(1), 16)
    with open(f"/proc/{guest.process.pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(hva)
        old = mem.read(1)[0]
        mem.seek(hva)
        mem.write(bytes([old ^ 0xFF]))
        mem.seek(hva)
        new = mem.read(1)[0]
    return old, new


def test_one_byte_changed_in_the_paused_destination_is_named(harness_factory, artifacts):
    run = PingPong(harness_factory.plan(topology_from_dict({"machine": "q35"})), artifacts,
                   PingPongOptions(hops=1, seed=41, load="none", compare_ram=True))
    compare = run._compare_ram
    flipped: list[tuple[int, int]] = []

    def change_then_compare(src, dst, number):
        flipped.append(flip_byte(dst, PAGE_GPA + OFFSET))
        return compare(src, dst, number)

    run._compare_ram = change_then_compare  # type: ignore[method-assign]
    result = run.run()
    assert flipped and flipped[0][1] == flipped[0][0] ^ 0xFF, flipped
    failure = result.failure
    assert failure is not None, "a byte changed in the destination's RAM went unnoticed"
    assert (failure.kind, failure.hop) == ("lost-dirty-pages", 1), failure.describe()
    listed = (artifacts / "ram-diff-hop-1.txt").read_text()
    want = f"guest-physical {PAGE_GPA:#x}: first difference at +{OFFSET - OFFSET % 8:#x}"
    line = next((x for x in listed.splitlines() if x.startswith(f"guest-physical "
                                                                f"{PAGE_GPA:#x}:")), None)
    assert line is not None, f"page {PAGE_GPA:#x} not listed:\n{listed[:3000]}"
    # The first differing byte is the one flipped; the word shown holds it.
    assert line.startswith(f"guest-physical {PAGE_GPA:#x}: first difference at "
                           f"+{OFFSET:#x}, "), (line, want)
    shift = 8 * (OFFSET % 8)
    source = int(line.split("source ")[1].split(",")[0], 16)
    destination = int(line.split("destination ")[1], 16)
    assert (source >> shift) & 0xFF == flipped[0][0], line
    assert (destination >> shift) & 0xFF == flipped[0][1], line
    assert source ^ destination == 0xFF << shift, line
