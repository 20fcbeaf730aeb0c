"""A known gap is only that failure (issue 23): the real seed test of the AHCI
bus-master gap, run by a nested pytest on the real QEMU, with its destination
SIGKILLed as soon as it listens.  Where the gap holds (7.2.22) the test must
not pass as the known failure: it is a FAIL naming the gap it failed
differently from, the signature it expected and the qemu-died it got; where
the gap does not hold (10.0.2) it is a plain FAIL with the same verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.qemu.facts import parse_version
from harness.qemu.known import KNOWN_GAPS

pytestmark = pytest.mark.smoke

CHECKOUT = Path(__file__).resolve().parents[2]
TEST = ("tests/pci/seed/test_ahci_stability_cases.py::"
        "test_bus_master_cleared_then_migrated_destination_loads_and_disk_works")
GAP = next(g for g in KNOWN_GAPS if g.id == "ahci-bus-master-cleared-migration")

# Loaded into the nested pytest with -p: the destination is killed right after it
# was told to listen, before the source sends anything.
KILLER = '''
import os
import signal

import harness.scenarios.migration.hop as hop

_listen = hop._incoming_uri


def _listen_then_die(dst, transport):
    uri = _listen(dst, transport)
    os.kill(dst.process.pid, signal.SIGKILL)
    return uri


hop._incoming_uri = _listen_then_die
'''


def test_a_killed_destination_in_a_known_gap_test_is_a_fail(tmp_path, harness_settings,
                                                             harness_factory):
    (tmp_path / "killdst.py").write_text(KILLER)
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "killdst", "-p", "harness.report.collect", f"--report-results={results}",
         f"--qemu-binary={harness_factory.binary.path}", "--accel", harness_factory.accel.name,
         f"--timeout-multiplier={harness_settings.timeout_multiplier}",
         f"--artifacts-dir={tmp_path / 'art'}", "-q", TEST],
        capture_output=True, text=True, cwd=CHECKOUT, env=env, timeout=600, check=False)
    tests = json.loads(results.read_text())["tests"] if results.exists() else []
    assert len(tests) == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = tests[0]
    holds = GAP.holds(parse_version(harness_factory.binary.version), "q35")
    assert result["outcome"] == "failed", (
        f"QEMU {harness_factory.binary.version}: a killed destination came out "
        f"{result['outcome']} ({result['message']}); expected failed")
    assert proc.returncode == 1, proc.stdout[-3000:]
    got = "got HopFailure of kind qemu-died: hop 1: qemu-died: destination dst:"
    if holds:
        want = (f"failed differently from known gap {GAP.id}: expected "
                f"{GAP.signature.words()}, {got}")
        assert result["message"].startswith(want), (result["message"], want)
        assert "SIGKILL" in result["message"], result["message"]
        assert result["xfail_reason"] is None, result
    else:
        assert "qemu-died" in result["message"] and "SIGKILL" in result["message"], result
