"""`pci-harness hotplug-stress` output contract, with the guest and the cycles faked."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.cli import runner
from harness.qemu.firmware import Firmware
from harness.scenarios.hotplug import stress as hotplug_stress
from harness.scenarios.hotplug.stress import CycleFailure, StressResult


class FakeFactory:
    def __init__(self, settings: Any, progress: Any = None) -> None:
        self.settings = settings
        self.firmware = Firmware(settings.firmware, "seabios", None, version="1.16.2-test")

    @contextlib.contextmanager
    def guest(self, topology: Any, artifacts: Path) -> Iterator[str]:
        yield "guest"


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, result: StressResult,
         capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    monkeypatch.setenv("PCI_HARNESS_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(runner, "GuestFactory", FakeFactory)
    seen: dict[str, Any] = {}

    def fake_run(guest: Any, cycles: int, seed: int, artifacts: Path, progress: Any) -> Any:
        seen.update(cycles=cycles, seed=seed)
        return result

    monkeypatch.setattr(hotplug_stress, "run_stress", fake_run)
    status = cli.main(["hotplug-stress", "--machine", "pc", "--cycles", "3", "--seed", "11",
                       "--json"])
    out, err = capsys.readouterr()
    assert seen == {"cycles": 3, "seed": 11}
    return status, json.loads(out.strip().splitlines()[-1]), err


def test_passing_run_prints_the_contract(monkeypatch, tmp_path, capsys):
    result = StressResult("pc", 11, cycles=3, plug_s=[0.3, 0.5, 0.4], unplug_s=[0.1, 0.2, 0.3],
                          seconds={"wall": 30.0, "event": 3.0, "guest": 20.0, "qmp": 3.0,
                                   "model": 0.3})
    status, summary, _ = _run(monkeypatch, tmp_path, result, capsys)
    assert status == 0
    assert (summary["ok"], summary["cycles"], summary["failures"]) == (True, 3, [])
    assert summary["plug_s"] == {"p50": 0.4, "p95": 0.5}
    assert summary["unplug_s"] == {"p50": 0.2, "p95": 0.3}
    # per cycle: wall 10, waiting 1 -> overhead 9; own = (30 - 3 - 20 - 3 - 0.3) / 3
    assert summary["per_cycle_s"]["overhead"] == 9.0
    assert summary["per_cycle_s"]["own"] == pytest.approx(3.7 / 3, abs=1e-3)


def test_failed_cycle_exits_1_and_names_the_artifacts(monkeypatch, tmp_path, capsys):
    result = StressResult("pc", 11, cycles=2, plug_s=[0.3, 0.5], unplug_s=[0.1],
                          failures=[CycleFailure(2, "unplug", "no DEVICE_DELETED for 'hp2'")])
    status, summary, err = _run(monkeypatch, tmp_path, result, capsys)
    assert status == 1 and summary["ok"] is False
    assert summary["failures"] == [{"cycle": 2, "step": "unplug",
                                    "what": "no DEVICE_DELETED for 'hp2'"}]
    assert summary["artifacts"] and summary["artifacts"] in err
    assert Path(summary["artifacts"]).is_dir()


def test_cycles_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["hotplug-stress", "--machine", "pc", "--cycles", "0"])
    assert "--cycles must be at least 1" in capsys.readouterr().err
