"""Source against destination RAM at the switchover (ramdiff): what a difference says."""

from __future__ import annotations

import struct

from harness.scenarios.migration.memscan import PAGE, TAG_A, TAG_B
from harness.scenarios.migration.ramdiff import CHUNK, compare_dumps

PAGES = 3 * CHUNK // PAGE  # three compare chunks


def _checker_page(tag: int, index: int, gen: int) -> bytes:
    body = struct.pack("<QQQ", tag, index, gen)
    return body + bytes(PAGE - len(body) - 8) + struct.pack("<Q", gen ^ tag ^ index)


def _ram() -> bytearray:
    ram = bytearray(PAGES * PAGE)
    for n in range(0, PAGES, 7):
        ram[n * PAGE:n * PAGE + 8] = struct.pack("<Q", 0x1000 + n)  # kernel-ish data
    return ram


def test_identical_ram_is_clean() -> None:
    ram = _ram()
    diff = compare_dumps(bytes(ram), bytes(ram), hop=3)
    assert diff.clean and diff.differing == 0 and diff.pages == []
    assert diff.describe() == "hop 3: source and destination RAM identical (3 MiB)"


def test_a_stale_checker_page_is_named_with_both_generations() -> None:
    src, dst = _ram(), _ram()
    at = 300 * PAGE                           # in the second chunk
    src[at:at + PAGE] = _checker_page(TAG_B, 9542, 943)
    dst[at:at + PAGE] = _checker_page(TAG_B, 9542, 930)   # sent 13 generations earlier
    diff = compare_dumps(bytes(src), bytes(dst), hop=2)
    assert diff.differing == 1, diff.pages
    page = diff.pages[0]
    assert (page.physical, page.first_offset) == (at, 16), page
    assert page.checker == "B[9542] generation 943 on the source, 930 on the destination"
    assert diff.describe().startswith("1 of 768 pages differ between the paused source and "
                                      "the loaded destination before it ran"), diff.describe()
    assert f"guest-physical {at:#x}: memory-checker page B[9542]" in diff.describe()


def test_other_pages_name_the_first_differing_word_and_are_all_counted() -> None:
    src, dst = _ram(), _ram()
    dst[5 * PAGE + 0x123] ^= 0xFF             # one byte of a kernel page
    for n in range(600, 700):                 # 100 more, in the last chunk
        dst[n * PAGE + 8] = 1
    diff = compare_dumps(bytes(src), bytes(dst), hop=1)
    assert diff.differing == 101
    first = diff.pages[0]
    assert (first.physical, first.first_offset, first.checker) == (5 * PAGE, 0x123, None)
    assert first.source_word != first.destination_word
    assert first.source_word ^ first.destination_word == 0xFF << (8 * (0x123 % 8))
    assert "first difference at +0x123" in first.describe()


def test_a_checker_page_the_destination_lacks_says_so() -> None:
    src, dst = _ram(), _ram()
    src[PAGE:2 * PAGE] = _checker_page(TAG_A, 5, 944)
    diff = compare_dumps(bytes(src), bytes(dst), hop=1)
    assert diff.pages[0].checker == "A[5] generation 944 on the source, no checker page on " \
                                    "the destination"


def test_the_comparison_runs_with_the_memory_load_unless_told() -> None:
    from harness.scenarios.migration.data import PingPongOptions

    assert PingPongOptions(hops=1, seed=1, load="memory,fs").comparing_ram
    assert not PingPongOptions(hops=1, seed=1, load="write").comparing_ram
    assert not PingPongOptions(hops=1, seed=1, load="memory", compare_ram=False).comparing_ram
    assert PingPongOptions(hops=1, seed=1, load="none", compare_ram=True).comparing_ram


def test_an_elf_core_is_compared_by_its_ram_blocks() -> None:
    """dump-guest-memory's layout: ELF64 header, program headers (a PT_NOTE and
    one PT_LOAD per RAM block, paddr = guest-physical), then the blocks."""
    from harness.scenarios.migration.ramdiff import compare_cores, ram_segments

    low, high = bytes(0xA0000), bytes(2 * PAGE)
    changed = bytearray(high)
    changed[PAGE + 40] = 7
    src = _core([(0, low), (0x100000, high)])
    assert [(s.physical, s.size) for s in ram_segments(src)] == [(0, 0xA0000), (0x100000, 8192)]
    diff = compare_cores(src, _core([(0, low), (0x100000, bytes(changed))]), hop=4)
    assert diff.differing == 1 and diff.pages[0].physical == 0x101000, diff.pages
    assert diff.pages[0].first_offset == 40


def _core(blocks: list[tuple[int, bytes]]) -> bytes:
    """An ELF64 core as dump-guest-memory writes it: ELF header, a PT_NOTE, one
    PT_LOAD per RAM block (paddr = guest-physical), then the blocks."""
    phoff, phsize = 64, 56
    data_at = phoff + phsize * (len(blocks) + 1)
    headers = struct.pack("<IIQQQQQQ", 4, 0, data_at, 0, 0, 0, 0, 0)
    body = b""
    for paddr, data in blocks:
        headers += struct.pack("<IIQQQQQQ", 1, 0, data_at + len(body), 0, paddr,
                               len(data), len(data), 0)
        body += data
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 4, 0x3E,
                       1, 0, phoff, 0, 0, 64, phsize, len(blocks) + 1, 0, 0, 0)
    return ehdr + headers + body


class _DumpingQmp:
    def __init__(self, core: bytes):
        self.core = core

    def execute(self, command: str, args: dict) -> dict:
        assert command == "dump-guest-memory" and args["protocol"].startswith("file:")
        with open(args["protocol"][5:], "wb") as out:
            out.write(self.core)
        return {}


def _guest(name: str, pid: int, core: bytes):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, qmp=_DumpingQmp(core), process=SimpleNamespace(pid=pid),
                           plan=SimpleNamespace(topology=SimpleNamespace(memory=2**20)))


def test_compare_ram_dumps_each_guest_and_names_the_page(tmp_path) -> None:
    """Each side's own dump: the destination's changed byte is found (dumping the
    source twice would find nothing)."""
    from harness.scenarios.migration.ramdiff import compare_ram

    ram = bytes(4 * PAGE)
    changed = bytearray(ram)
    changed[2 * PAGE + 0x123] ^= 0xFF
    diff = compare_ram(_guest("g00", 100, _core([(0x100000, ram)])),
                       _guest("g01", 101, _core([(0x100000, bytes(changed))])), 1, tmp_path)
    assert diff.differing == 1, diff.describe()
    assert (diff.pages[0].physical, diff.pages[0].first_offset) == (0x102000, 0x123)
    assert "guest-physical 0x102000: first difference at +0x123" in \
        (tmp_path / "ram-diff-hop-1.txt").read_text()


def test_compare_ram_refuses_to_compare_a_guest_with_itself(tmp_path) -> None:
    import pytest

    from harness.errors import HarnessError
    from harness.scenarios.migration.ramdiff import compare_ram

    core = _core([(0, bytes(PAGE))])
    src = _guest("g00", 100, core)
    for dst in (src, _guest("g00-again", 100, core)):
        with pytest.raises(HarnessError, match="compare g00 with itself"):
            compare_ram(src, dst, 1, tmp_path)


def test_pages_kept_for_a_replay_read_back_by_address(tmp_path) -> None:
    from harness.scenarios.migration.ramdiff import core_pages, load_pages, save_pages

    high = bytearray(3 * PAGE)
    high[PAGE:2 * PAGE] = bytes([7]) * PAGE
    core = _core([(0, bytes(PAGE)), (0x100000, bytes(high))])
    pages = core_pages(core, [0x101000, 0])
    assert pages == {0x101000: bytes([7]) * PAGE, 0: bytes(PAGE)}
    save_pages(pages, tmp_path / "source-pages.bin")
    assert load_pages(tmp_path / "source-pages.bin") == pages
