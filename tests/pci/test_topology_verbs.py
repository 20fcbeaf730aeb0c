"""`pci-harness compare` and `pci-harness where` as a user runs them (subprocess).

Exit status 0 / 1 / 2, the --json object as the last stdout line, bad input
refused before any QEMU starts, and QEMU's own refusal attributed to the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PCI_HARNESS_ARTIFACTS=str(tmp_path / "artifacts"))
    # Not from the checkout: `python -m harness` there imports its harness/, not the
    # installed package (tox installs it).
    return subprocess.run([sys.executable, "-m", "harness", *args, "--accel", "tcg"],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
                          check=False)


def last_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, f"no stdout; stderr:\n{result.stderr}"
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_compare_clean_and_with_a_wrong_expectation(tmp_path: Path) -> None:
    # The same machine twice: as written (exit 0), then with an expectation that the
    # guest cannot meet -- rp1 is x-width=4, the model is told 2 (exit 1).
    body = """\
        machine = "q35"
        [[device]]
        id = "rp1"
        driver = "pcie-root-port"
        "x-speed" = "8"
        "x-width" = 4
        [[device]]
        id = "disk1"
        driver = "virtio-blk-pci"
        bus = "rp1"
        disk = "16M"
        """
    good = cli(tmp_path, "compare", str(write(tmp_path, "good.toml", body)), "--json")
    assert good.returncode == 0, good.stderr
    data = last_json(good)
    assert (data["ok"], data["differences"], data["failures"]) == (True, [], [])
    assert data["devices"] >= 7  # mch, rp1, disk1, mgmt, 1f.0, 1f.2, 1f.3

    bad = cli(tmp_path, "compare", str(write(tmp_path, "bad.toml", body.replace(
        '"x-width" = 4\n', '"x-width" = 4\n        [device.expect]\n        link_cap_width = 2\n'))),
        "--json")
    assert bad.returncode == 1, bad.stderr
    data = last_json(bad)
    assert data["ok"] is False and data["failures"]
    assert data["differences"] == [{"device": "rp1", "field": "link_cap_width", "model": 2,
                                    "qemu": None, "guest": 4}]
    table = cli(tmp_path, "compare", str(tmp_path / "bad.toml"))
    assert table.returncode == 1
    header = next(line for line in table.stdout.splitlines() if line.startswith("device"))
    assert header.split() == ["device", "field", "model", "QEMU", "guest"]
    assert any(line.split()[:2] == ["rp1", "link_cap_width"] for line in table.stdout.splitlines())


@pytest.mark.parametrize(("body", "fragment"), [
    ('colour = "red"\n', "unknown top-level key"),
    ('[[device]]\nid = "a"\ndriver = "e1000"\n[[device]]\nid = "a"\ndriver = "e1000"\n',
     "id is used twice"),
    ('[[device]]\nid = "a"\ndriver = "e1000"\nbus = "br9"\n', "bus 'br9' does not exist"),
    (('[[device]]\nid = "a"\ndriver = "e1000"\naddr = "4.0"\n'
     '[[device]]\nid = "b"\ndriver = "e1000"\naddr = "4.0"\n'), "also used by device 'a'"),
])
def test_compare_refuses_bad_topologies_before_qemu(tmp_path: Path, body: str,
                                                    fragment: str) -> None:
    path = write(tmp_path, "t.toml", 'machine = "pc"\n' + body)
    result = cli(tmp_path, "compare", str(path), "--json")
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert last_json(result)["ok"] is False
    # Nothing was started: no guest artifacts were even created.
    assert not list((tmp_path / "artifacts").glob("pci-harness-compare-*"))


def test_qemu_refusal_is_attributed_to_the_device(tmp_path: Path) -> None:
    # x-speed=32 passes the harness's checks; QEMU 7.2 refuses it.
    path = write(tmp_path, "t.toml", """\
        machine = "q35"
        [[device]]
        id = "fast1"
        driver = "pcie-root-port"
        "x-speed" = "32"
        """)
    result = cli(tmp_path, "compare", str(path))
    assert result.returncode == 2, result.stderr
    first = result.stderr.splitlines()
    message = next(line for line in first if line.startswith("pci-harness compare:"))
    assert "device 'fast1'" in message and "x-speed" in message, result.stderr
    assert "Traceback" not in result.stderr


def test_where_json_and_text(tmp_path: Path) -> None:
    topo = ROOT / "topologies" / "q35-native-hotplug.toml"
    result = cli(tmp_path, "where", "e1000e", "--topology", str(topo), "--hotplug", "--json")
    assert result.returncode == 0, result.stderr
    data = last_json(result)
    assert data["driver"] == "e1000e" and data["failures"] == [] and data["ok"] is True
    buses = {b["bus"]: b for b in data["buses"]}
    # acpi_hotplug = false: the pcie-pci-bridge drives its own bus (SHPC), the root
    # ports with their slot 0 taken and the hotplug=off port are out, pcie.0 too.
    assert set(buses) == {"ppb"}, data
    assert {"bus", "kind", "free_slots", "hotplug", "secondary_bus_name"} <= set(buses["ppb"])
    assert buses["ppb"]["hotplug"] == "shpc" and 0 not in buses["ppb"]["free_slots"]
    out = {e["bus"]: e for e in data["excluded"]}
    assert {"pcie.0", "rp1", "rp2", "rp3"} <= set(out)
    assert all(out[b]["refused_by"] == "qemu" for b in ("pcie.0", "rp3"))

    text = cli(tmp_path, "where", "pci-bridge", "--machine", "pc", "--id", "brX")
    assert text.returncode == 0, text.stderr
    row = next(line.split() for line in text.stdout.splitlines() if line.startswith("pci.0"))
    assert row[1] == "pci" and row[3] == "acpi-bsel" and row[4] == "brX", text.stdout

    before = set((tmp_path / "artifacts").glob("pci-harness-where-*"))
    bad = cli(tmp_path, "where", "no-such-driver", "--machine", "q35")
    assert bad.returncode == 2 and "not a PCI device" in bad.stderr, bad.stderr
    assert "FAILED" not in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    left = set((tmp_path / "artifacts").glob("pci-harness-where-*")) - before
    assert left == set(), f"a user error left artifacts: {sorted(left)}"
    bad = cli(tmp_path, "where", "ide-hd", "--machine", "q35")
    assert bad.returncode == 2 and "not a PCI device" in bad.stderr, bad.stderr
