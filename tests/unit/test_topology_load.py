"""Loading and validation: every error names the device, the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import TopologyError, UserError
from harness.topology import default_topology, load_topology, resolve, topology_from_dict
from harness.topology.data import Address

TOPOLOGIES = sorted((Path(__file__).parents[2] / "topologies").glob("*.toml"))


def load(devices: list[dict[str, Any]], **top: Any) -> Any:
    return topology_from_dict({"machine": "q35", **top, "device": devices}, source="t.toml")


def error(devices: list[dict[str, Any]], **top: Any) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(devices, **top)
    err = info.value
    assert isinstance(err, UserError)
    assert err.fix, "every topology error carries a fix"
    assert "t.toml" in err.message
    return err


def test_example_topologies_load() -> None:
    assert len(TOPOLOGIES) >= 6
    machines = {load_topology(p).kind for p in TOPOLOGIES}
    assert machines == {"pc", "q35"}


def test_unknown_top_level_key() -> None:
    err = error([], mashine="pc")
    assert "'mashine'" in err.message and "machine" in (err.fix or "")


@pytest.mark.parametrize("machine", ["pc", "q35", "pc-q35-7.2", "pc-i440fx-6.0"])
def test_machine_types_accepted(machine: str) -> None:
    assert topology_from_dict({"machine": machine}).machine == machine


def test_unknown_machine() -> None:
    with pytest.raises(TopologyError, match="unknown machine type 'virt'") as info:
        topology_from_dict({"machine": "virt"})
    assert "q35" in (info.value.fix or "")


def test_duplicate_id() -> None:
    err = error([{"id": "a", "driver": "e1000"}, {"id": "a", "driver": "e1000"}])
    assert "device 'a'" in err.message and "twice" in err.message


def test_reserved_mgmt_id() -> None:
    err = error([{"id": "mgmt", "driver": "e1000"}])
    assert "device 'mgmt'" in err.message and "reserved" in err.message


def test_bad_id_characters() -> None:
    err = error([{"id": "disk.1", "driver": "virtio-blk-pci"}])
    assert "device 'disk.1'" in err.message


def test_bus_does_not_exist() -> None:
    err = error([{"id": "d", "driver": "e1000", "bus": "rp9"}])
    assert "device 'd'" in err.message and "'rp9'" in err.message
    assert "pcie.0" in (err.fix or "")


def test_bus_is_not_a_bridge() -> None:
    err = error([{"id": "n", "driver": "e1000"}, {"id": "d", "driver": "e1000", "bus": "n"}])
    assert "device 'd'" in err.message and "creates no bus" in err.message


@pytest.mark.parametrize("addr", ["20.0", "1.8", "x", "1.0.0", True])
def test_bad_addr_syntax(addr: Any) -> None:
    err = error([{"id": "d", "driver": "e1000", "addr": addr}])
    assert "device 'd'" in err.message and "SLOT.FUNCTION" in (err.fix or "")


def test_addr_forms() -> None:
    assert Address.parse("1e.3", what="x") == Address(0x1E, 3)
    assert Address.parse("0x2", what="x") == Address(2, 0)
    assert Address.parse(4, what="x") == Address(4, 0)
    assert str(Address(0x1F, 2)) == "1f.2"


def test_two_devices_on_one_address() -> None:
    err = error([{"id": "a", "driver": "e1000", "addr": "3.0"},
                 {"id": "b", "driver": "e1000", "addr": "3"}])
    assert "device 'b'" in err.message and "'a'" in err.message


@pytest.mark.parametrize("slot,what", [("1e.0", "management NIC"), ("1f.0", "ICH9"),
                                       ("0.0", "host bridge")])
def test_reserved_root_slots(slot: str, what: str) -> None:
    err = error([{"id": "d", "driver": "e1000", "addr": slot}])
    assert what in err.message


def test_function_without_function_zero() -> None:
    err = error([{"id": "d", "driver": "e1000", "addr": "3.1"}])
    assert "device 'd'" in err.message and "multifunction" in (err.fix or "")


def test_function_zero_not_multifunction() -> None:
    err = error([{"id": "a", "driver": "e1000", "addr": "3.0"},
                 {"id": "b", "driver": "e1000", "addr": "3.1"}])
    assert "device 'a'" in err.message and 'multifunction = "on"' in (err.fix or "")


def test_multifunction_accepted() -> None:
    t = load([{"id": "a", "driver": "e1000", "addr": "3.0", "multifunction": "on"},
              {"id": "b", "driver": "e1000", "addr": "3.1"}])
    assert [d.addr for d in t.devices] == [Address(3, 0), Address(3, 1)]


def test_root_port_on_pc() -> None:
    err = error([{"id": "rp", "driver": "pcie-root-port"}], machine="pc")
    assert "device 'rp'" in err.message and "q35" in (err.fix or "")


def test_root_port_behind_a_bridge() -> None:
    err = error([{"id": "b", "driver": "pci-bridge"},
                 {"id": "rp", "driver": "pcie-root-port", "bus": "b"}])
    assert "device 'rp'" in err.message and "root bus" in err.message


def test_nonzero_slot_below_a_port() -> None:
    err = error([{"id": "rp", "driver": "pcie-root-port"},
                 {"id": "d", "driver": "e1000e", "bus": "rp", "addr": "2.0"}])
    assert "device 'd'" in err.message and "spec" in err.message


def test_switch_bus_holds_only_downstream_ports() -> None:
    err = error([{"id": "rp", "driver": "pcie-root-port"},
                 {"id": "up", "driver": "x3130-upstream", "bus": "rp"},
                 {"id": "d", "driver": "e1000e", "bus": "up"}])
    assert "device 'd'" in err.message and "downstream" in err.message


def test_downstream_port_needs_a_switch() -> None:
    err = error([{"id": "dn", "driver": "xio3130-downstream"}])
    assert "device 'dn'" in err.message


def test_bridge_loop() -> None:
    err = error([{"id": "a", "driver": "pci-bridge", "bus": "b"},
                 {"id": "b", "driver": "pci-bridge", "bus": "a"}])
    assert "loop" in err.message


def test_disk_on_a_driver_without_disks() -> None:
    err = error([{"id": "n", "driver": "e1000", "disk": "1G"}])
    assert "device 'n'" in err.message and "virtio-blk-pci" in (err.fix or "")


def test_bad_disk_size() -> None:
    err = error([{"id": "d", "driver": "virtio-blk-pci", "disk": "lots"}])
    assert "device 'd'" in err.message


def test_ahci_disk_needs_q35() -> None:
    err = error([], machine="pc", ahci_disk="64M")
    assert "ich9-ahci" in (err.fix or "")


def test_unknown_expect_key() -> None:
    err = error([{"id": "d", "driver": "e1000", "expect": {"lnk_width": 2}}])
    assert "device 'd'" in err.message and "link_width" in (err.fix or "")


def test_duplicate_chassis() -> None:
    err = error([{"id": "a", "driver": "pcie-root-port", "chassis": 1},
                 {"id": "b", "driver": "pcie-root-port", "chassis": 1}])
    assert "device 'b'" in err.message and "chassis=1" in err.message


def test_pci_bridge_chassis_zero() -> None:
    err = error([{"id": "b", "driver": "pci-bridge", "chassis_nr": 0}])
    assert "device 'b'" in err.message


def test_float_property_rejected() -> None:
    err = error([{"id": "rp", "driver": "pcie-root-port", "x-speed": 2.5}])
    assert "2_5" in (err.fix or "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="does not exist"):
        load_topology(tmp_path / "nope.toml")


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("machine = \n")
    with pytest.raises(TopologyError, match="bad.toml"):
        load_topology(path)


def test_resolve_assigns_slots_and_chassis() -> None:
    t = resolve(load([{"id": "rp1", "driver": "pcie-root-port"},
                      {"id": "rp2", "driver": "pcie-root-port", "chassis": 1},
                      {"id": "d", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "1M"},
                      {"id": "b", "driver": "pci-bridge", "addr": "1.0"},
                      {"id": "n", "driver": "e1000", "bus": "b"}]))
    addrs = {d.id: d.addr for d in t.devices}
    assert addrs["b"] == Address(1, 0)
    assert addrs["rp1"] == Address(2, 0) and addrs["rp2"] == Address(3, 0)
    assert addrs["d"] == Address(0, 0)
    assert addrs["n"] == Address(1, 0)  # slot 0 of an SHPC bridge is left free
    chassis = {d.id: d.prop("chassis") or d.prop("chassis_nr") for d in t.devices}
    assert chassis["rp2"] == 1 and len({chassis["rp1"], chassis["rp2"], chassis["b"]}) == 3


def test_cache_key_is_stable_and_ignores_expect() -> None:
    base = [{"id": "d", "driver": "virtio-blk-pci", "disk": "64M"}]
    a = load(base)
    b = topology_from_dict({"machine": "q35", "device": base}, source="other.toml")
    c = load([{**base[0], "expect": {"link_width": 2}}])
    d = load([{**base[0], "disk": "32M"}])
    assert a.cache_key() == b.cache_key() == c.cache_key()
    assert a.cache_key() != d.cache_key()
    assert len(a.cache_key()) == 16 and int(a.cache_key(), 16) >= 0


def test_default_topology() -> None:
    for machine in ("pc", "q35"):
        t = default_topology(machine)
        assert [d.driver for d in t.devices] == ["virtio-blk-pci"]
    with pytest.raises(TopologyError):
        default_topology("sparc")
