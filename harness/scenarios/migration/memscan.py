"""The memory checker's pages, found in a dump of guest RAM by the host.

Why: on QEMU 7.2.22 under TCG the guest kernel itself is often broken right
after a hop (an oops, a GPF) before the checker can run a sweep, so the guest
cannot name the lost page.  The host can: QEMU dumps the paused guest's RAM
(`pmemsave`), and every checker page carries its region tag, index and
generation (harness/guest/tools/memcheck.c).  The checker writes A[0], B[0],
A[1], B[1], ... in order, so in a consistent memory every page before the
last one holding the newest generation S holds S, and every page after it
holds S-1.  Any other value is a page that missed a write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.guest.running import Guest
    from harness.scenarios.migration.watch import HopFailure

PAGE = 4096
TAG_A = 0x50434948414D0041
TAG_B = 0x50434948414D0042
_HEAD = struct.Struct("<QQQ")
_LAST = struct.Struct("<Q")


@dataclass(frozen=True)
class StalePage:
    region: str
    index: int
    physical: int
    expected_gen: int
    found_gen: int
    intact: bool        # its own words agree (a whole page from an earlier generation)


@dataclass(frozen=True)
class DumpScan:
    pages: int                   # checker pages found (A + B)
    newest_gen: int
    stale: tuple[StalePage, ...]
    missing: int                 # indexes with no A or no B page in the dump

    def describe(self) -> str:
        if not self.pages:
            return "no checker page in the dump"
        if not self.stale and not self.missing:
            return (f"all {self.pages} checker pages consistent (newest generation "
                    f"{self.newest_gen})")
        text = f"{len(self.stale)} of {self.pages} checker pages stale"
        if self.stale:
            p = self.stale[0]
            text += (f"; first: page {p.index} of region {p.region} at guest-physical "
                     f"{p.physical:#x}: expected generation {p.expected_gen}, found "
                     f"{p.found_gen}{'' if p.intact else ' (torn page)'}")
        if self.missing:
            text += f"; {self.missing} index(es) with a page missing"
        return text


def scan(data: bytes) -> DumpScan:
    """Find every checker page in `data` (guest RAM from physical address 0)."""
    found: dict[tuple[str, int], tuple[int, int, bool]] = {}
    view = memoryview(data)
    for offset in range(0, len(data) - PAGE + 1, PAGE):
        tag, index, gen = _HEAD.unpack_from(view, offset)
        if tag != TAG_A and tag != TAG_B:
            continue
        (last,) = _LAST.unpack_from(view, offset + PAGE - 8)
        region = "A" if tag == TAG_A else "B"
        found[(region, index)] = (gen, offset, last == gen ^ tag ^ index)
    if not found:
        return DumpScan(0, 0, (), 0)
    count = 1 + max(index for _, index in found)
    order = [(region, i) for i in range(count) for region in ("A", "B")]
    newest = max(gen for gen, _, _ in found.values())
    present = [key for key in order if key in found]
    boundary = max(n for n, key in enumerate(present) if found[key][0] == newest)
    stale = []
    for n, key in enumerate(present):
        gen, offset, intact = found[key]
        want = newest if n <= boundary else newest - 1
        if n == boundary and gen == newest and not intact:
            continue  # the page being written when the guest stopped
        if gen != want or not intact:
            stale.append(StalePage(key[0], key[1], offset, want, gen, intact))
    missing = sum(1 for key in order if key not in found)
    return DumpScan(len(found), newest, tuple(stale), missing)


def scan_file(path: Path) -> DumpScan:
    return scan(path.read_bytes())


def scan_after_failure(guest: Guest | None, failure: HopFailure, artifacts: Path,
                       memory_bytes: int, memory_load: bool,
                       progress: Callable[[str], None]) -> HopFailure:
    """With the memory load, stop the failed hop's guest, dump its RAM (pmemsave) and
    add what `scan` finds to the verdict (and memory-scan.txt): it names a page that
    missed writes even when the guest kernel broke before the checker could."""
    from harness.scenarios.migration.watch import HopFailure

    if not memory_load or guest is None or guest.qmp is None \
            or failure.kind in ("data-mismatch", "lost-dirty-pages"):
        return failure
    if memory_bytes > 2 * 1024**3:  # RAM is contiguous from 0 only below the PCI hole
        return failure
    dump = artifacts / "guest-ram.bin"
    try:
        guest.qmp.execute("stop")
        guest.qmp.execute("pmemsave", {"val": 0, "size": memory_bytes, "filename": str(dump)})
        found = scan_file(dump)
    except (HarnessError, OSError) as exc:
        (artifacts / "memory-scan.txt").write_text(f"no RAM scan: {exc}\n")
        return failure
    finally:
        dump.unlink(missing_ok=True)  # the guest's RAM; the verdict keeps what it found
    text = found.describe()
    (artifacts / "memory-scan.txt").write_text(
        text + "\n" + "".join(f"{p.region}[{p.index}] at {p.physical:#x}: expected "
                              f"{p.expected_gen}, found {p.found_gen}"
                              f"{'' if p.intact else ' (torn)'}\n" for p in found.stale[:200]))
    if not found.stale and not found.missing:
        return failure
    progress(f"host scan of {guest.name}'s RAM after the failure: {text}")
    return HopFailure(failure.kind, failure.hop, f"{failure.detail}; the host's scan of the "
                      f"guest RAM (memory-scan.txt): {text}", tail=failure.tail,
                      process=failure.process)
