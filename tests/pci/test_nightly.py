"""`pci-harness nightly` with real guests: a tiny selection, remote-style gateways,
and a deliberately broken second run that must show up as a regression.

The broken test lives in a tmp suite, never in tests/: the real suite is not
touched.  Each nightly here runs a few guest boots under -n 2 / two gateways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.pytestplugin.seed_index import SEED_ITEMS
from harness.qemu.binary import find_qemu

CHECKOUT = Path(__file__).resolve().parents[2]
SELECTION = "test_verbs_execute_succeed_wait or test_console_is_readable_and_logged"

CANARY = '''
import re

import pytest

from harness.topology import expected_view

BROKEN = {broken}


@pytest.mark.seed("pci-connectivity")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_guest_sees_the_model_ids(guest, machine, topology):
    model = {{f"{{f.vendor:04x}}:{{f.device:04x}}" for f in expected_view(topology).functions
             if f.vendor is not None and f.device is not None}}
    if BROKEN and machine == "q35":
        model.add("dead:beef")  # the deliberate breakage: an id no QEMU device has
    seen = set(re.findall(r"\\b([0-9a-f]{{4}}:[0-9a-f]{{4}})\\b", guest.succeed("lspci -n")))
    assert model <= seen, f"model {{sorted(model)}} vs guest {{sorted(seen)}}"


@pytest.mark.seed("master-abort")
@pytest.mark.known_gap("master-abort-not-emulated")  # the table's reason, on every QEMU here
def test_known_failure_canary():
    assert False, "spec: all-ones and Received Master Abort; read 0 (canary)"
'''


def run_nightly(*args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # The nightly's own boot-stress is tested in tests/unit/test_bootstress_report.py.
    proc = subprocess.run([sys.executable, "-m", "harness", "nightly", "--accel", "tcg", "--json",
                           "--boot-stress-boots", "0", *args], capture_output=True, text=True,
                          cwd=CHECKOUT, env=env,
                          timeout=timeout, check=False)
    lines = proc.stdout.strip().splitlines()
    return proc, (json.loads(lines[-1]) if lines else {})


def fake_remote_checkout(tmp_path: Path) -> Path:
    """What `--tx ssh=HOST//python=PATH/.venv/bin/python//chdir=PATH` finds on a host:
    a checkout with its .venv (here: links to this one), in another directory."""
    remote = tmp_path / "remote-checkout"
    remote.mkdir()
    for name in ("pyproject.toml", "tests", "harness", ".venv"):
        (remote / name).symlink_to(CHECKOUT / name)
    return remote


def test_small_real_run_on_two_gateways_writes_the_four_files(tmp_path):
    remote = fake_remote_checkout(tmp_path)
    out = tmp_path / "reports" / "run"
    proc, verdict = run_nightly(
        "--output", str(out),
        "--tx", "popen//python=.venv/bin/python",
        "--tx", f"popen//python={remote}/.venv/bin/python//chdir={remote}",
        "--", "-k", SELECTION)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert verdict["ok"] and verdict["counts"]["passed"] == 2, verdict
    assert {p.name for p in out.iterdir()} >= {"junit.xml", "report.json", "report.html",
                                               "summary.md"}
    report = json.loads((out / "report.json").read_text())
    qemu = find_qemu()
    expected = {f"tests/pci/test_boot.py::{name.strip()}" for name in SELECTION.split(" or ")}
    assert {t["nodeid"]: (t["outcome"], t["machine"], t["qemu_version"], t["qemu_binary"])
            for t in report["tests"]} == \
        {n: ("passed", "q35", qemu.version, str(qemu.path)) for n in expected}
    assert report["runs"][0]["accel"].startswith("tcg"), report["runs"][0]
    # Both gateways ran a test; the second one ran from the "remote" checkout.
    workers = {w["id"]: w for w in report["runs"][0]["workers"]}
    assert {t["worker"] for t in report["tests"]} == set(workers) == {"gw0", "gw1"}
    assert workers["gw1"]["cwd"] == str(remote), workers
    matrix = (out / "summary.md").read_text().split("## Seed items")[1].split("\n## ")[0]
    table = [line for line in matrix.splitlines()
             if line.startswith("| ") and not line.startswith("| Seed item")]
    assert [row.split(" | ")[0][2:] for row in table] == list(SEED_ITEMS)


def test_broken_second_run_is_a_regression_and_exits_1(tmp_path):
    suite, reports = tmp_path / "suite", tmp_path / "reports"
    suite.mkdir()
    canary = suite / "test_nightly_canary.py"
    canary.write_text(textwrap.dedent(CANARY.format(broken=False)))
    good, verdict = run_nightly("--output", str(reports / "good"), "--jobs", "2", "--", str(suite))
    assert good.returncode == 0, good.stderr[-4000:]
    first = json.loads((reports / "good" / "report.json").read_text())
    run = first["runs"][0]["label"]
    items = first["items"]
    assert (items["pci-connectivity"]["pc"], items["pci-connectivity"]["q35"]) == \
        ({run: "pass"}, {run: "pass"})
    assert items["master-abort"]["any"] == {run: "known-failure"}  # a test without a machine

    canary.write_text(textwrap.dedent(CANARY.format(broken=True)))
    broken, verdict = run_nightly("--output", str(reports / "broken"), "--jobs", "2", "--",
                                  str(suite))
    assert broken.returncode == 1, broken.stderr[-4000:]
    nodeid = "test_nightly_canary.py::test_guest_sees_the_model_ids[q35]"
    assert verdict["regressions"] == [nodeid], verdict
    summary = (reports / "broken" / "summary.md").read_text()
    section = summary.split("### Regressions (1)")[1]
    assert f"`{nodeid}` (pci-connectivity, q35, QEMU {run}): passed -> failed" in section, summary
    assert "dead:beef" in section
    assert "| pci-connectivity | 1 pass | 1 **FAIL** | - |" in summary
    report = json.loads((reports / "broken" / "report.json").read_text())
    failed = next(t for t in report["tests"] if t["nodeid"] == nodeid)
    assert failed["artifacts"] and failed["console_tail"], failed
    assert (Path(failed["artifacts"]) / "guest" / "console.log").is_file()
