"""where(): replayed against QMP answers recorded from paused QEMU 7.2 machines.

Each recorded answer was also checked live: device_add at the first free slot of
every hotplug answer succeeds, and buses excluded for lack of a handler refuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.scenarios.where import WhereAnswer, where

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.glob("where-*.json"))


class ReplayQmp:
    """Answers QMP commands from a recording; an unrecorded command fails the test."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        self.answers = {self.key(e["execute"], e["arguments"]): e for e in log}

    @staticmethod
    def key(command: str, arguments: dict[str, Any] | None) -> str:
        return json.dumps([command, arguments], sort_keys=True)

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        entry = self.answers[self.key(command, arguments)]
        if "error" in entry:
            raise RuntimeError(entry["error"]["desc"])
        return entry["return"]


def answer(name: str, driver: str, hotplug: bool = False) -> dict[str, Any]:
    rec = json.loads((DATA / f"where-{name}.json").read_text())
    result: dict[str, Any] = where(ReplayQmp(rec["qmp_log"]), driver,
                                   hotplug_only=hotplug).to_dict()
    return result


def buses(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["bus"]: b for b in result["buses"]}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_replay_reproduces_recorded_answers(path: Path) -> None:
    rec = json.loads(path.read_text())
    qmp = ReplayQmp(rec["qmp_log"])
    for label, recorded in rec["where"].items():
        driver, _, hp = label.partition(" ")
        assert where(qmp, driver, hotplug_only=bool(hp)).to_dict() == recorded, label


def test_json_shape() -> None:
    result = answer("q35-pcie-to-pci", "virtio-net-pci")
    assert set(result) == {"driver", "buses", "excluded"}
    for bus in result["buses"]:
        assert {"bus", "kind", "free_slots", "hotplug", "secondary_bus_name"} <= set(bus)
        assert bus["kind"] in ("pci", "pcie")
    json.dumps(result)


def test_pcie0_is_cold_plug_only() -> None:
    cold = buses(answer("q35-pcie-to-pci", "virtio-net-pci"))
    assert cold["pcie.0"]["hotplug"] is None and cold["pcie.0"]["kind"] == "pcie"
    assert 0 not in cold["pcie.0"]["free_slots"] and 0x1F not in cold["pcie.0"]["free_slots"]
    assert 0x1E not in cold["pcie.0"]["free_slots"]  # the management NIC
    hot = answer("q35-pcie-to-pci", "virtio-net-pci", hotplug=True)
    assert "pcie.0" not in buses(hot)
    assert ["pcie.0"] == [e["bus"] for e in hot["excluded"] if "handler" in e["reason"]]


def test_mechanisms_come_from_the_handler_type() -> None:
    acpi = buses(answer("q35-pcie-to-pci", "virtio-net-pci"))
    assert acpi["ppb"]["hotplug"] == "acpi-pcihp" and acpi["pb1"]["hotplug"] == "acpi-pcihp"
    pc = buses(answer("pc-nested-bridges", "virtio-net-pci"))
    assert {b["hotplug"] for b in pc.values()} == {"acpi-bsel"}
    native = buses(answer("q35-native-hotplug", "virtio-net-pci"))
    assert native["ppb"]["hotplug"] == "shpc"


def test_shpc_bus_never_offers_slot_zero() -> None:
    # QEMU refuses slot 0 of an SHPC bus even for cold-plug (checked live in
    # tests/pci/seed/test_pci_connectivity.py); with ACPI hotplug the same bridge's slot 0 is fine.
    cold = buses(answer("q35-native-hotplug", "virtio-net-pci"))
    hot = buses(answer("q35-native-hotplug", "virtio-net-pci", hotplug=True))
    assert cold["ppb"]["hotplug"] == "shpc"
    assert 0 not in cold["ppb"]["free_slots"] and 0 not in hot["ppb"]["free_slots"]
    acpi = buses(answer("q35-pcie-to-pci", "virtio-net-pci"))
    assert acpi["ppb"]["hotplug"] == "acpi-pcihp" and 0 in acpi["ppb"]["free_slots"]


def test_port_with_hotplug_off_is_not_hot_pluggable() -> None:
    native = answer("q35-native-hotplug", "virtio-net-pci")
    assert buses(native)["rp3"]["hotplug"] is None
    assert buses(native)["rp3"]["free_slots"] == [0]
    assert buses(native)["rp3"]["qemu_also_accepts"] == list(range(1, 32))
    assert "PCIe spec" in buses(native)["rp3"]["note"]
    hot = answer("q35-native-hotplug", "virtio-net-pci", hotplug=True)
    assert "rp3" not in buses(hot)


def test_occupied_port_is_excluded_with_the_lenient_note() -> None:
    result = answer("q35-pcie-to-pci", "virtio-net-pci")
    reasons = {e["bus"]: e["reason"] for e in result["excluded"]}
    assert "rp1" not in buses(result) and "QEMU 7.2" in reasons["rp1"]


def test_root_port_only_on_the_root_bus() -> None:
    result = answer("q35-pcie-to-pci", "pcie-root-port")
    assert list(buses(result)) == ["pcie.0"]
    assert buses(result)["pcie.0"]["secondary_bus_name"] == "pcie-root-port1"
    assert "chassis" in buses(result)["pcie.0"]["note"]
    assert not buses(answer("pc-nested-bridges", "pcie-root-port"))


def test_downstream_port_only_on_a_switch() -> None:
    result = answer("q35-pcie-to-pci", "xio3130-downstream")
    assert list(buses(result)) == ["up"]


def test_pcie_only_function_on_conventional_bus_is_noted() -> None:
    pc = buses(answer("pc-nested-bridges", "e1000e"))
    assert "QEMU accepts" in pc["br1"]["note"]


def test_bridge_secondary_bus_name_and_hotplug_note() -> None:
    hot = buses(answer("pc-nested-bridges", "pci-bridge", hotplug=True))
    assert hot["br3"]["secondary_bus_name"] == "pci-bridge1"
    assert "not seen by the guest" in hot["br3"]["note"]


def test_not_a_pci_device() -> None:
    rec = json.loads((DATA / "where-pc-nested-bridges.json").read_text())
    with pytest.raises(UserError, match="not a PCI device"):
        where(ReplayQmp(rec["qmp_log"]), "ide-hd")


def test_answer_to_json_round_trips() -> None:
    rec = json.loads((DATA / "where-pc-nested-bridges.json").read_text())
    ans = where(ReplayQmp(rec["qmp_log"]), "virtio-net-pci")
    assert isinstance(ans, WhereAnswer)
    assert json.loads(ans.to_json()) == ans.to_dict()


def test_occupied_port_refuses_hot_add_at_any_slot() -> None:
    # Cold-plug takes slots 1-31 below a port (spec-only exclusion), device_add
    # does not: QEMU checks "function 0" (slot 0) first.  Checked live in
    # tests/pci/seed/test_pci_connectivity.py.
    cold = {e["bus"]: e for e in answer("q35-pcie-to-pci", "e1000e")["excluded"]}
    hot = {e["bus"]: e for e in answer("q35-pcie-to-pci", "e1000e", hotplug=True)["excluded"]}
    assert cold["rp1"]["refused_by"] == "spec" and "slots 1-31" in cold["rp1"]["reason"]
    assert hot["rp1"]["refused_by"] == "qemu" and "slot 0 is taken" in hot["rp1"]["reason"]
    assert hot["pcie.0"]["refused_by"] == "qemu"
