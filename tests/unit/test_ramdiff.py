"""Source against destination RAM at the switchover (ramdiff): what a difference says."""

from __future__ import annotations

import struct

from harness.scenarios.memscan import PAGE, TAG_A, TAG_B
from harness.scenarios.ramdiff import CHUNK, compare_dumps

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
