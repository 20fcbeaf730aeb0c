"""`pci-harness explore`: bad input fails before QEMU starts; adopt without QEMU boots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli.app import main
from harness.scenarios.explore.case import case_toml, load_case
from harness.scenarios.explore.check import Outcome
from harness.topology import topology_from_dict


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["explore", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv, needle", [
    (["--examples", "0"], "--examples and --minutes must be positive"),
    (["--minutes", "-1"], "--examples and --minutes must be positive"),
    (["--replay", "/nonexistent/case.toml"], "does not exist"),
    (["--adopt", "/nonexistent/case.toml"], "--adopt needs --expect"),
    (["--shard", "2/2"], "is not K/N"),
    (["--shard", "x"], "is not K/N"),
])
def test_bad_input_is_one_paragraph_and_status_2(argv: list[str], needle: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run([*argv, "--json"], capsys)
    assert status == 2, (status, err)
    assert needle in err and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["ok"] is False


def test_a_plain_topology_is_refused_as_a_case(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "t.toml"
    plain.write_text('machine = "q35"\n')
    status, _, err = run(["--replay", str(plain)], capsys)
    assert status == 2 and "not a found case" in err


def test_adopt_writes_the_case_with_its_expectation(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology_from_dict({"machine": "q35", "device": [{"id": "d1", "driver": "e1000e"}]})
    case = tmp_path / "found.toml"
    case.write_text(case_toml(Outcome(topo, "differs", ({"driver": "e1000e", "field": "f"},)),
                              {"kind": "differs", "signature": [["differs", "e1000e", "f"]],
                               "replay": "old"}))
    status, out, _ = run(["--adopt", str(case), "--expect", "fails", "--into",
                          str(tmp_path / "explored"), "--json"], capsys)
    assert status == 0
    result = json.loads(out.strip().splitlines()[-1])
    kept = load_case(Path(result["adopted"]))
    series = ".".join(result["qemu_version"].split(".")[:2])
    assert kept.meta["expect"] == {series: "fails"}
    assert kept.meta["replay"] == f"pci-harness explore --replay {result['adopted']}"
