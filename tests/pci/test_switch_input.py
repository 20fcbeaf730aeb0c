"""`pingpong --switch-at` bad input through the real CLI: a symbol the guest does
not have, an offset outside the function (exit 2, one paragraph, no QEMU left),
and a switch point the guest never reaches (exit 1 naming the hop)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.qemu.process import qemu_pids_mentioning


def _pingpong(tmp_path, qemu_binary, *args):
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(tmp_path))
    argv = [sys.executable, "-m", "harness", "pingpong", "--machine", "q35", "--disk", "ahci",
            "--hops", "1", "--accel", "tcg", *args]
    if qemu_binary:
        argv += ["--qemu-binary", qemu_binary]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path, check=False)


@pytest.fixture
def qemu_binary(pytestconfig):
    return pytestconfig.getoption("--qemu-binary", default=None)


@pytest.mark.parametrize(("spec", "fragments"), [
    ("ahci_qc_isue", ("no function 'ahci_qc_isue'", "similar: ahci_qc_issue")),
    ("ahci_qc_issue+0x100000", ("offset 0x100000 is outside ahci_qc_issue", "Give an offset below")),
])
def test_bad_switch_point_is_exit_2_and_leaves_no_qemu(tmp_path, qemu_binary, spec, fragments):
    result = _pingpong(tmp_path, qemu_binary, "--load", "none", "--switch-at", spec)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"
    assert qemu_pids_mentioning(str(tmp_path)) == []


def test_switch_point_never_reached_fails_the_hop(tmp_path, qemu_binary):
    # No load: nothing attaches a port multiplier, so ahci_pmp_attach never runs.
    result = _pingpong(tmp_path, qemu_binary, "--load", "none", "--switch-at",
                       "ahci_pmp_attach", "--timeout-multiplier", "0.5")
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "hop 1: switch-point-not-reached: ahci_pmp_attach" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert qemu_pids_mentioning(str(tmp_path)) == []
