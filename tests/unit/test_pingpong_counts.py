"""The ping-pong's "N writes, M blocks verified" counts what the checks read back
(PingPongResult.read_back), so a check that skipped blocks shows M < N."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.scenarios.migration.data import HopRecord, PingPongResult
from harness.workloads.disk import Verified


def _record(units: dict[str, int]) -> HopRecord:
    stats: Any = SimpleNamespace(hop=1)
    return HopRecord(stats, 0.1, {n: Verified(bytes=u * 4096, units=u, seconds=0.0)
                                  for n, u in units.items()})


def _result(*hops: dict[str, int], final: dict[str, int]) -> PingPongResult:
    return PingPongResult(ok=False, records=[_record(h) for h in hops], failure=None,
                          artifacts=Path("/nonexistent"),
                          final={n: Verified(bytes=0, units=u, seconds=0.0)
                                 for n, u in final.items()})


def test_the_count_is_the_sum_of_every_check():
    result = _result({"ahci": 40, "vblk1": 7}, {"ahci": 35, "vblk1": 9}, final={"ahci": 5})
    assert (result.read_back("ahci"), result.read_back("vblk1")) == (80, 16)


def test_a_hop_whose_check_read_nothing_back_shows_a_smaller_count():
    # 120 writes; the check after hop 2 read none of its 40 back.
    result = _result({"ahci": 40}, {"ahci": 0}, {"ahci": 40}, final={"ahci": 0})
    assert result.read_back("ahci") == 80  # of 120 writes
