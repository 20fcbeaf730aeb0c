"""Source RAM against destination RAM at the switchover: the lost dirty page, named.

When a live migration has completed, the source is paused for good
(`postmigrate`) and the destination, started with -S, has loaded the stream but
not run a single instruction.  Their RAM must then be identical, page for page:
whatever differs is a page the guest wrote and the migration did not resend (or
resent stale).  The host compares the two dumps (`dump-guest-memory` of each,
an ELF core whose PT_LOAD segments are the guest's RAM blocks by guest-physical
address; `pmemsave`, 1 KiB at a time, took 2-4 s per 512 MiB) before `cont`, so the verdict does not depend on the guest surviving long enough to
notice: on QEMU 7.2.22 under TCG the destination kernel often oopses within
milliseconds of resuming, before any checker in the guest can run a sweep.

A differing page that belongs to the memory checker (harness/guest/tools/
memcheck.c: tag, index, generation in its first words) is named with its region,
index and both generations; any other page with its first differing offset and
the words there on both sides.
"""

from __future__ import annotations

import mmap
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.scenarios.migration.memscan import _HEAD, PAGE, TAG_A, TAG_B

if TYPE_CHECKING:
    from harness.guest.running import Guest

CHUNK = 1 << 20          # compared with one bytes == first; pages only where a chunk differs
LISTED = 200             # differing pages written to ram-diff.txt
_WORD = struct.Struct("<Q")


@dataclass(frozen=True)
class PageDiff:
    physical: int                 # guest-physical address of the page
    first_offset: int             # first differing byte within the page
    source_word: int              # the 8-byte word there, on the source ...
    destination_word: int         # ... and on the destination
    checker: str | None = None    # "A[123] generation 944 on the source, 931 on the destination"

    def describe(self) -> str:
        where = f"guest-physical {self.physical:#x}"
        if self.checker:
            return f"{where}: memory-checker page {self.checker}"
        return (f"{where}: first difference at +{self.first_offset:#x}, source "
                f"{self.source_word:#018x}, destination {self.destination_word:#018x}")


@dataclass
class RamDiff:
    hop: int
    compared_bytes: int
    seconds: float
    pages: list[PageDiff] = field(default_factory=list)
    differing: int = 0            # all differing pages (pages lists the first LISTED)

    @property
    def clean(self) -> bool:
        return self.differing == 0

    def describe(self) -> str:
        mib = self.compared_bytes / 2**20
        if self.clean:
            return f"hop {self.hop}: source and destination RAM identical ({mib:.0f} MiB)"
        checker = sum(1 for p in self.pages if p.checker)
        return (f"{self.differing} of {self.compared_bytes // PAGE} pages differ between the "
                f"paused source and the loaded destination before it ran ({mib:.0f} MiB "
                f"compared; {checker} of the first {len(self.pages)} are memory-checker "
                f"pages): first {self.pages[0].describe()}")

    def as_dict(self) -> dict[str, Any]:
        return {"hop": self.hop, "compared_mib": round(self.compared_bytes / 2**20, 1),
                "seconds": round(self.seconds, 3), "differing_pages": self.differing,
                "pages": [p.describe() for p in self.pages[:20]]}


def _checker_label(src: bytes, dst: bytes) -> str | None:
    """"A[5] generation 944 on the source, 931 on the destination" for a checker page."""
    stag, sindex, sgen = _HEAD.unpack_from(src, 0)
    dtag, dindex, dgen = _HEAD.unpack_from(dst, 0)
    if stag not in (TAG_A, TAG_B) and dtag not in (TAG_A, TAG_B):
        return None
    tag, index = (stag, sindex) if stag in (TAG_A, TAG_B) else (dtag, dindex)
    region = "A" if tag == TAG_A else "B"
    return (f"{region}[{index}] generation {sgen} on the source, "
            f"{dgen if dtag == tag else 'no checker page'} on the destination")


def page_diffs(src: bytes | memoryview, dst: bytes | memoryview,
               base: int = 0) -> Iterator[PageDiff]:
    """Every page at which SRC and DST (RAM from guest-physical BASE) differ."""
    if len(src) != len(dst):
        raise HarnessError(f"RAM dumps differ in size: source {len(src)}, "
                           f"destination {len(dst)} bytes")
    for chunk in range(0, len(src), CHUNK):
        a_chunk, b_chunk = bytes(src[chunk:chunk + CHUNK]), bytes(dst[chunk:chunk + CHUNK])
        if a_chunk == b_chunk:
            continue
        for page in range(0, len(a_chunk), PAGE):
            a, b = a_chunk[page:page + PAGE], b_chunk[page:page + PAGE]
            if a == b:
                continue
            first = next(i for i in range(len(a)) if a[i] != b[i])
            word = first - first % 8
            yield PageDiff(base + chunk + page, first, _WORD.unpack_from(a, word)[0],
                           _WORD.unpack_from(b, word)[0], _checker_label(a, b))


def _count(diff: RamDiff, pages: Iterator[PageDiff]) -> None:
    """Count every differing page into DIFF, listing the first LISTED."""
    for page in pages:
        diff.differing += 1
        if len(diff.pages) < LISTED:
            diff.pages.append(page)


def compare_dumps(src: bytes, dst: bytes, hop: int, seconds: float = 0.0) -> RamDiff:
    """Two flat dumps of RAM from guest-physical 0."""
    diff = RamDiff(hop, len(src), seconds)
    _count(diff, page_diffs(src, dst))
    return diff


@dataclass(frozen=True)
class Segment:
    physical: int   # guest-physical address of the RAM block
    offset: int     # where its bytes start in the dump file
    size: int


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1


def ram_segments(core: bytes | mmap.mmap) -> list[Segment]:
    """The PT_LOAD segments of an ELF64 core from `dump-guest-memory` (paging off)."""
    if core[:4] != b"\x7fELF" or core[4] != 2:
        raise HarnessError("the guest memory dump is not an ELF64 core")
    fields = _EHDR.unpack_from(core, 0)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    out = []
    for n in range(phnum):
        p_type, _, offset, _, paddr, filesz, _, _ = _PHDR.unpack_from(core, phoff + n * phentsize)
        if p_type == PT_LOAD and filesz:
            out.append(Segment(paddr, offset, filesz))
    return out


def compare_cores(src: bytes | mmap.mmap, dst: bytes | mmap.mmap, hop: int) -> RamDiff:
    """Compare two dumps segment by segment (the same RAM blocks on both sides)."""
    src_segments, dst_segments = ram_segments(src), ram_segments(dst)
    if [(s.physical, s.size) for s in src_segments] != \
            [(s.physical, s.size) for s in dst_segments]:
        raise HarnessError("the source and destination dumps hold different RAM blocks: "
                           f"{[(hex(s.physical), s.size) for s in src_segments]} vs "
                           f"{[(hex(s.physical), s.size) for s in dst_segments]}")
    diff = RamDiff(hop, sum(s.size for s in src_segments), 0.0)
    src_view, dst_view = memoryview(src), memoryview(dst)
    for a, b in zip(src_segments, dst_segments):
        _count(diff, page_diffs(src_view[a.offset:a.offset + a.size],
                                dst_view[b.offset:b.offset + b.size], base=a.physical))
    return diff


def core_pages(core: bytes | mmap.mmap, addresses: list[int]) -> dict[int, bytes]:
    """{guest-physical page address: its PAGE bytes} from a dump-guest-memory core."""
    segments = ram_segments(core)
    out: dict[int, bytes] = {}
    for address in addresses:
        seg = next((s for s in segments if s.physical <= address < s.physical + s.size), None)
        if seg is None:
            raise HarnessError(f"guest-physical {address:#x} is in no RAM block of the dump")
        start = seg.offset + address - seg.physical
        out[address] = bytes(core[start:start + PAGE])
    return out


def save_pages(pages: dict[int, bytes], path: Path) -> None:
    """Pages as a file: per page its guest-physical address (8 bytes, LE), then PAGE bytes."""
    path.write_bytes(b"".join(_WORD.pack(a) + data for a, data in sorted(pages.items())))


def load_pages(path: Path) -> dict[int, bytes]:
    data = path.read_bytes()
    step = 8 + PAGE
    return {_WORD.unpack_from(data, n)[0]: data[n + 8:n + step] for n in range(0, len(data), step)}


def _dump(guest: Guest, path: Path) -> None:
    assert guest.qmp is not None
    guest.qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{path}"})


def _dump_dir(guest: Guest) -> str | None:
    """/dev/shm when it holds both dumps with room to spare (no disk writes, and
    the dumps are gone with the host's RAM), else the default temporary directory."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return None
    return "/dev/shm" if free > 4 * guest.plan.topology.memory + 2**30 else None


def compare_ram(src: Guest, dst: Guest, hop: int, artifacts: Path,
                source_pages: Path | None = None) -> RamDiff:
    """Dump both paused guests' RAM and compare; the differing pages go to
    ARTIFACTS/ram-diff-hop-N.txt, and the source's contents of the listed pages
    to `source_pages` when given (save_pages: what a replay of the hop is
    compared with once the source is gone)."""
    pids = [g.process.pid if g.process is not None else None for g in (src, dst)]
    if src is dst or (pids[0] is not None and pids[0] == pids[1]):
        raise HarnessError(f"ramdiff asked to compare {src.name} with itself (process "
                           f"{pids[0]}): a comparison that can never find a difference")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pcih-ram-", dir=_dump_dir(src)) as tmp:
        paths = Path(tmp) / "source.core", Path(tmp) / "destination.core"
        _dump(src, paths[0])
        _dump(dst, paths[1])
        with open(paths[0], "rb") as f, open(paths[1], "rb") as g, \
                mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as a, \
                mmap.mmap(g.fileno(), 0, prot=mmap.PROT_READ) as b:
            diff = compare_cores(a, b, hop)  # its memoryviews are gone when it returns
            if source_pages is not None and not diff.clean:
                save_pages(core_pages(a, [p.physical for p in diff.pages]), source_pages)
    diff.seconds = time.monotonic() - t0
    if not diff.clean:
        (artifacts / f"ram-diff-hop-{hop}.txt").write_text(
            diff.describe() + "\n" + "".join(p.describe() + "\n" for p in diff.pages))
    return diff
