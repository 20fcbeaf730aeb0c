"""The nightly starts the longest tests first, by an earlier night's durations."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from harness.nightly_suite import _previous_durations
from harness.report.collect import longest_first


def _items(*ids: str) -> list:
    return [SimpleNamespace(nodeid=i) for i in ids]


def test_longest_first_with_unknown_tests_at_the_median() -> None:
    items = _items("unit_a", "pingpong_24", "new_test", "boot", "unit_b")
    durations = {"unit_a": 0.01, "pingpong_24": 205.0, "boot": 60.0, "unit_b": 0.02}
    ordered = [i.nodeid for i in longest_first(items, durations)]  # type: ignore[arg-type]
    # median of the four known durations (sorted: .01 .02 60 205 -> index 2) is 60.
    assert ordered == ["pingpong_24", "new_test", "boot", "unit_b", "unit_a"], ordered


def test_previous_durations_come_from_the_same_qemu_version(tmp_path: Path) -> None:
    old = tmp_path / "20261129-010000"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"started": "2026-11-29T01:00", "tests": [
        {"nodeid": "t::a", "duration": 3.5, "qemu_version": "10.0.2"},
        {"nodeid": "t::a", "duration": 9.0, "qemu_version": "7.2.22"},
        {"nodeid": "t::b", "duration": None, "qemu_version": "10.0.2"}]}))
    tonight = tmp_path / "20261130-010000"
    tonight.mkdir()
    assert _previous_durations(tonight, "10.0.2") == {"t::a": 3.5}
    assert _previous_durations(tonight, "7.2.22") == {"t::a": 9.0}
    assert _previous_durations(tonight, "9.2.0") == {}
    (old / "report.json").write_text("{not json")
    assert _previous_durations(tonight, "10.0.2") == {}


def test_two_qemus_at_once_split_the_workers() -> None:
    import argparse

    from harness.nightly_suite import shares, workers

    args = argparse.Namespace(jobs="auto", qemu_runs="together")
    total = int(workers("auto"))
    both = shares(args, 2)
    assert [a.jobs for a in both] == [str(max(1, total // 2))] * 2, (total, both)
    assert shares(argparse.Namespace(jobs="3"), 2)[0].jobs == "1"
    assert shares(argparse.Namespace(jobs="1"), 2)[0].jobs == "1"  # never 0 workers
    assert shares(argparse.Namespace(jobs="logical"), 2)[0].jobs == "logical"
    assert args.jobs == "auto"  # the caller's arguments are not changed
