"""How the nightly lays out several QEMUs' suites: who runs the harness's own tests,
and who runs the boot-stress cells."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import nightly_suite
from harness.nightly_suite import ONCE_PER_NIGHT, carrier, pytest_argv, run_suites

A = SimpleNamespace(version="7.2.22", path=Path("/usr/bin/qemu-a"))
B = SimpleNamespace(version="10.0.2", path=Path("/opt/qemu-b"))


def _args(**over: object) -> argparse.Namespace:
    base = {"jobs": "4", "accel": "tcg", "timeout_multiplier": 1.0, "keep_artifacts": False,
            "no_snapshot": False, "pytest_args": [], "firmware": None,
            "qemu_runs": "together", "tx": None, "dist": None}
    return argparse.Namespace(**(base | over))


def _deselected(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[1] for a in argv if a.startswith("--deselect=")}


def test_only_the_carrying_suite_runs_the_harness_own_tests(tmp_path: Path) -> None:
    carrying = pytest_argv(_args(), A, "a", tmp_path, ["pc"])  # type: ignore[arg-type]
    other = pytest_argv(_args(), A, "a", tmp_path, ["pc"],  # type: ignore[arg-type]
                        once_per_night=False)
    assert not set(ONCE_PER_NIGHT) & _deselected(carrying), carrying
    assert set(ONCE_PER_NIGHT) <= _deselected(other), (ONCE_PER_NIGHT, other)


def _night(parent: Path, name: str, tests: list[tuple[str, str, float]]) -> Path:
    night = parent / name
    night.mkdir()
    (night / "report.json").write_text(json.dumps({"started": name, "tests": [
        {"nodeid": n, "qemu_version": v, "duration": d} for n, v, d in tests]}))
    return night


def test_the_suite_with_the_most_time_to_spare_carries_them(tmp_path: Path) -> None:
    tonight = tmp_path / "20261207-010000"
    # No earlier night: the first suite carries them.
    assert carrier([A, B], tonight) == 0  # type: ignore[list-item]
    _night(tmp_path, "20261206-010000", [("t::x", "7.2.22", 900.0), ("t::y", "10.0.2", 40.0),
                                         ("t::z", "10.0.2", 50.0)])
    assert carrier([A, B], tonight) == 1  # type: ignore[list-item]
    assert carrier([B, A], tonight) == 0  # type: ignore[list-item]
    assert carrier([A], tonight) == 0  # type: ignore[list-item]
    # The next night: B carried the unit tests, which made its suite the longer one;
    # they do not count, so B keeps the duty instead of handing it back.
    _night(tmp_path, "20261207-010000", [("t::x", "7.2.22", 900.0), ("t::y", "10.0.2", 40.0),
                                         ("tests/unit/test_a.py::t", "10.0.2", 2000.0)])
    assert carrier([A, B], tmp_path / "20261208-010000") == 1  # type: ignore[list-item]


def test_boot_stress_cells_go_to_the_suite_that_ends_first(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ended: dict[str, float] = {}
    who: dict[int, str] = {}

    def fake_suite(args, binary, label, output, machines, *, once_per_night):  # type: ignore[no-untyped-def]
        time.sleep(0.05 if label == "short" else 0.6)
        ended[label] = time.monotonic()
        return (SimpleNamespace(label=label, once=once_per_night), [], [])

    def cell(n: int):  # type: ignore[no-untyped-def]
        def run() -> str:
            who[n] = threading.current_thread().name
            time.sleep(0.05)
            return f"cell {n} at {time.monotonic():.3f}"
        return run

    monkeypatch.setattr(nightly_suite, "run_suite", fake_suite)
    suites, cells = run_suites(_args(), [A, B], ["long", "short"], tmp_path,  # type: ignore[list-item]
                               ["pc"], [cell(n) for n in range(4)])
    assert [s[0].label for s in suites] == ["long", "short"]
    assert [s[0].once for s in suites] == [True, False]  # no earlier night: the first
    assert [c.split(" at ")[0] for c in cells] == [f"cell {n}" for n in range(4)], cells
    # All four ran before the long suite ended, in the short suite's thread.
    finished = [float(c.split(" at ")[1]) for c in cells]
    assert max(finished) < ended["long"], (finished, ended)
    assert len(set(who.values())) == 1, who

    # One after the other: the cells still run, after the last suite.
    monkeypatch.setattr(nightly_suite.stopping, "stopped", lambda: False)
    suites, cells = run_suites(_args(qemu_runs="one-by-one"), [A, B], ["long", "short"],  # type: ignore[list-item]
                               tmp_path, ["pc"], [cell(n) for n in range(2)])
    assert len(suites) == 2 and len(cells) == 2 and None not in cells, (suites, cells)

    # A stop before the cells: each is None in its place, none run.
    monkeypatch.setattr(nightly_suite.stopping, "stopped", lambda: True)
    who.clear()
    suites, cells = run_suites(_args(qemu_runs="one-by-one"), [A, B], ["long", "short"],  # type: ignore[list-item]
                               tmp_path, ["pc"], [cell(n) for n in range(3)])
    assert cells == [None, None, None] and who == {}, (cells, who)
