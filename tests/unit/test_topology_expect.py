"""The model's rules, and the model against real QEMU 7.2 recordings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.topology import expected_view, load_topology, topology_from_dict
from harness.views import compare, config_view, parse_qemu_view
from harness.views.pciview import Bar, PciView

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[2]
RECORDINGS = sorted(p for p in DATA.glob("*.json") if not p.name.startswith("where-"))


def model(devices: list[dict[str, object]], machine: str = "q35", **top: object) -> PciView:
    return expected_view(topology_from_dict({"machine": machine, **top, "device": devices}))


@pytest.mark.parametrize("rec_path", RECORDINGS, ids=lambda p: p.stem)
def test_model_matches_real_qemu(rec_path: Path) -> None:
    """Model vs query-pci/QOM vs the config space QEMU exposes: no difference at all."""
    rec = json.loads(rec_path.read_text())
    topo = load_topology(ROOT / rec["topology"])
    diffs = compare(expected_view(topo), parse_qemu_view(rec["query-pci"], rec["qom"]),
                    config_view(rec["query-pci"], rec["config"]))
    assert diffs == [], "\n".join(map(str, diffs))


def test_builtin_functions() -> None:
    pc = {f.path: (f.vendor, f.device) for f in model([], "pc").functions}
    assert pc == {("00.0",): (0x8086, 0x1237), ("01.0",): (0x8086, 0x7000),
                  ("01.1",): (0x8086, 0x7010), ("01.3",): (0x8086, 0x7113),
                  ("1e.0",): (0x1AF4, 0x1000)}
    q35 = {f.path: (f.vendor, f.device) for f in model([]).functions}
    assert q35 == {("00.0",): (0x8086, 0x29C0), ("1e.0",): (0x1AF4, 0x1000),
                   ("1f.0",): (0x8086, 0x2918), ("1f.2",): (0x8086, 0x2922),
                   ("1f.3",): (0x8086, 0x2930)}
    assert model([]).function("mgmt").path == ("1e.0",)


def test_virtio_is_modern_only_behind_a_port() -> None:
    view = model([{"id": "rp", "driver": "pcie-root-port"},
                  {"id": "a", "driver": "virtio-blk-pci", "bus": "rp", "disk": "1M"},
                  {"id": "b", "driver": "virtio-blk-pci", "disk": "1M"}])
    behind, root = view.function("a"), view.function("b")
    assert behind.device == 0x1042 and root.device == 0x1001
    assert [b.index for b in behind.bars or ()] == [1, 4]
    assert Bar(4, "mem", 16384, True, True) in (behind.bars or ())
    assert Bar(0, "io", 128) in (root.bars or ())
    assert behind.pcie_type == "endpoint" and root.pcie_type == ""
    assert "pm" in (behind.capabilities or ()) and "pm" not in (root.capabilities or ())
    assert (behind.subsystem, root.subsystem) == (0x1100, 2)


def test_virtio_on_pc_is_transitional() -> None:
    net = model([{"id": "n", "driver": "virtio-net-pci"}], "pc").function("n")
    assert net.device == 0x1000 and net.msix_table_size == 4


def test_vectors_zero_removes_msix() -> None:
    net = model([{"id": "n", "driver": "virtio-net-pci", "vectors": 0}]).function("n")
    assert "msix" not in (net.capabilities or ()) and net.msix_table_size is None
    assert 1 not in [b.index for b in net.bars or ()]


def test_port_link_follows_x_speed_and_endpoint() -> None:
    view = model([{"id": "rp", "driver": "pcie-root-port", "x-speed": "8", "x-width": 4},
                  {"id": "d", "driver": "e1000e", "bus": "rp"},
                  {"id": "empty", "driver": "pcie-root-port", "x-speed": "5", "x-width": 2},
                  {"id": "dflt", "driver": "pcie-root-port"}])
    rp = view.function("rp")
    assert (rp.link_cap_speed, rp.link_cap_width, rp.link_speed, rp.link_width) == (8, 4, 2.5, 1)
    empty = view.function("empty")
    assert (empty.link_speed, empty.link_width) == (5.0, 2)  # no device: its own maximum
    assert (view.function("dflt").link_cap_speed, view.function("dflt").link_cap_width) == (16, 32)


def test_old_machine_types_default_to_gen1_ports_and_native_hotplug() -> None:
    rp = model([{"id": "rp", "driver": "pcie-root-port"}], "pc-q35-3.1").function("rp")
    assert (rp.link_cap_speed, rp.link_cap_width) == (2.5, 1)
    assert rp.bus_hotplug == "pcie-native"


def test_hotplug_mechanisms() -> None:
    q35 = model([{"id": "rp", "driver": "pcie-root-port"},
                 {"id": "off", "driver": "pcie-root-port", "hotplug": "off"},
                 {"id": "b", "driver": "pcie-pci-bridge", "bus": "rp"}])
    assert q35.function("rp").bus_hotplug == "acpi-pcihp"
    assert q35.function("off").bus_hotplug == "none"
    assert q35.function("off").slot_hotplug_capable is False
    assert q35.root_bus_hotplug == "none"
    native = model([{"id": "rp", "driver": "pcie-root-port"},
                    {"id": "b", "driver": "pcie-pci-bridge", "bus": "rp"}], acpi_hotplug=False)
    assert native.function("rp").bus_hotplug == "pcie-native"
    assert native.function("b").bus_hotplug == "shpc"
    pc = model([{"id": "b", "driver": "pci-bridge"}], "pc")
    assert pc.function("b").bus_hotplug == "acpi-bsel" and pc.root_bus_hotplug == "acpi-bsel"


def test_builtin_ahci_driver_only_when_the_guest_loads_ahci() -> None:
    assert model([]).function("1f.2").driver is None
    assert model([], ahci_disk="8M").function("1f.2").driver == "ahci"


def test_expect_overrides_replace_model_values() -> None:
    view = model([{"id": "rp", "driver": "pcie-root-port",
                   "expect": {"link_width": 2, "bar0_size": 8192, "bar2_kind": "io",
                              "capabilities": ["pcie"]}}])
    rp = view.function("rp")
    assert rp.link_width == 2 and rp.capabilities == ("pcie",)
    assert [(b.index, b.kind, b.size) for b in rp.bars or ()] == [(0, "mem", 8192),
                                                                  (2, "io", None)]
    gone = model([{"id": "n", "driver": "e1000", "expect": {"bar6_kind": "none"}}])
    assert 6 not in [b.index for b in gone.function("n").bars or ()]


def test_unknown_driver_is_placed_but_not_modelled() -> None:
    f = model([{"id": "x", "driver": "pvscsi"}]).function("x")
    assert f.path == ("01.0",) and f.vendor is None
