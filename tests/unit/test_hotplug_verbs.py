"""Hotplugger against a scripted QMP and a scripted guest shell: no QEMU here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.hotplug import plug as hotplug
from harness.scenarios.hotplug.io import host_block_ok
from harness.scenarios.hotplug.plug import (
    BusNotHotpluggable,
    Hotplugger,
    NotSeenByGuest,
    PlugRefused,
    PlugSpec,
    SlotOccupied,
    UnknownDevice,
    UnplugNotCompleted,
    UnplugPending,
    guest_glob,
    kind_of,
)
from harness.topology import topology_from_dict
from harness.views import QomBus
from harness.workloads.blocks import BLOCK_SIZE, block_bytes

TOPO = topology_from_dict({"machine": "pc", "device": [
    {"id": "br1", "driver": "pci-bridge", "addr": "4.0", "chassis_nr": 1},
    {"id": "nic1", "driver": "e1000", "bus": "br1", "addr": "3.0"},
]})


def _bus(name: str, hotplug_kind: str, devices: tuple[tuple[int, str, str], ...] = (),
         handler: str = "/machine/i440fx/pm") -> QomBus:
    return QomBus(name=name, path=f"/machine/peripheral/{name}/{name}", express=False,
                  parent_path="", parent_type="pci-bridge", handler_path=handler,
                  handler_type="PIIX4_PM", hotplug=hotplug_kind, devices=devices)


BUSES = {"br1": _bus("br1", "acpi-bsel", ((3 << 3, "e1000", "/machine/peripheral/nic1"),)),
         "off": _bus("off", "none", handler="")}


def _query_pci(ids: dict[str, int]) -> list[dict[str, Any]]:
    """br1 at 04.0 with devices (slot -> id) behind it, in query-pci's shape."""
    def fn(slot: int, qid: str) -> dict[str, Any]:
        return {"bus": 1, "slot": slot, "function": 0, "qdev_id": qid, "irq_pin": 1,
                "class_info": {"class": 0x0200}, "id": {"vendor": 0x8086, "device": 0x100E},
                "regions": []}
    bridge = fn(4, "br1")
    bridge["pci_bridge"] = {"bus": {"secondary": 1, "subordinate": 1},
                            "devices": [fn(s, i) for i, s in ids.items()]}
    return [{"bus": 0, "devices": [bridge]}]


class FakeQmp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.present = {"nic1": 3}
        self.events: list[dict[str, Any]] = []
        self.refuse: dict[str, QmpCommandError] = {}

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        args = dict(arguments or {})
        self.calls.append((command, args))
        if command in self.refuse:
            raise self.refuse[command]
        if command == "query-pci":
            return _query_pci(self.present)
        if command == "device_add":
            self.present[args["id"]] = int(args["addr"], 16)
        if command == "device_del" and args["id"] not in self.present:
            raise QmpCommandError("device_del", f"Device '{args['id']}' not found",
                                  "DeviceNotFound")
        return {}

    def wait_event(self, name: str, deadline: Deadline, match: Any = None) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event["event"] == name and (match is None or match(event)):
                return self.events.pop(i)
        raise DeadlineExceeded(f"{deadline.describe()}: no {name} event")


@dataclass
class FakePlan:
    topology: Any


@dataclass
class FakeGuest:
    qmp: FakeQmp = field(default_factory=FakeQmp)
    plan: FakePlan = field(default_factory=lambda: FakePlan(TOPO))
    console: Any = None
    answers: list[tuple[int, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    default: tuple[int, str] = (0, "")  # the answer once `answers` ran out

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        self.commands.append(command)
        return self.answers.pop(0) if self.answers else self.default

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        return self.execute(command, timeout)[1]

    def root_bus_hotplug(self) -> bool | None:
        return False  # q35 refuses device_add on pcie.0 (probed on a real guest)


@pytest.fixture
def hp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hotplugger:
    monkeypatch.setattr(hotplug, "qom_pci_buses", lambda qmp, root_hotplug=None: tuple(BUSES.values()))
    return Hotplugger(FakeGuest(), tmp_path)  # type: ignore[arg-type]


def test_kind_comes_from_the_driver_table():
    assert [kind_of(d) for d in ("virtio-blk-pci", "e1000e", "virtio-net-pci", "pci-bridge")] \
        == ["disk", "nic", "nic", "bridge"]
    with pytest.raises(Exception, match="not supported"):
        kind_of("ich9-ahci")


def test_guest_glob_wildcards_every_bus_number_below_the_root():
    assert guest_glob(("04.0", "01.0", "06.0")) == \
        "/sys/devices/pci0000:00/0000:00:04.0/0000:*:01.0/0000:*:06.0"


def test_plug_adds_backend_device_and_model_and_returns_the_guest_name(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    guest.answers = [(0, "@@seen vdb\n")]  # the sysfs poll
    plugged = hp.plug(PlugSpec("hd1", "virtio-blk-pci", "br1", 6), seed=3)
    assert (plugged.guest_name, plugged.path, plugged.mechanism) == \
        ("vdb", ("04.0", "06.0"), "acpi-bsel")
    names = [c for c, _ in guest.qmp.calls]
    assert names.index("blockdev-add") < names.index("device_add")
    add = dict(guest.qmp.calls)["device_add"]
    assert add == {"driver": "virtio-blk-pci", "id": "hd1", "bus": "br1", "addr": "0x6",
                   "drive": "hd1.disk"}
    # The guest loads the driver itself (uevent autoload): nothing is preloaded.
    assert not any("modprobe" in c for c in guest.commands), guest.commands
    assert hp.topology.device("hd1").bus == "br1"
    # The host wrote the seeded block 0 before the plug.
    assert plugged.image is not None
    assert plugged.image.read_bytes()[:BLOCK_SIZE] == block_bytes("hd1", 3, 0, 0)


def test_occupied_slot_and_unhotpluggable_bus_are_refused_before_qemu(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    with pytest.raises(SlotOccupied, match=r"slot 0x3 of bus 'br1' is occupied by nic1"):
        hp.plug(PlugSpec("x", "e1000", "br1", 3))
    with pytest.raises(BusNotHotpluggable, match="'off' does not support hotplugging"):
        hp.plug(PlugSpec("y", "e1000", "off", 1))
    assert [c for c, _ in guest.qmp.calls if c in ("device_add", "netdev_add")] == []


def test_refused_device_add_removes_the_backend_and_carries_qemus_text(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    guest.qmp.refuse["device_add"] = QmpCommandError("device_add", "PCI: slot 3 function 0 "
                                                     "not available for e1000", "GenericError")
    with pytest.raises(PlugRefused) as info:
        hp.plug(PlugSpec("x", "e1000", "br1", 3), preflight=False)
    assert info.value.desc.startswith("PCI: slot 3 function 0 not available")
    assert ("netdev_del", {"id": "x.net"}) in guest.qmp.calls
    assert hp.plugged == {} and hp.topology == TOPO


def test_guest_that_never_binds_gives_a_named_error_with_its_diagnosis(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    guest.default = (1, "@@notseen\ndmesg: can't assign; no space")
    with pytest.raises(NotSeenByGuest, match="never bound a driver to 'hd1'") as info:
        hp.plug(PlugSpec("hd1", "virtio-blk-pci", "br1", 6),
                Deadline(0.3, "plug", scaled=False))
    assert "no space" in (info.value.tail or "")


def test_unplug_waits_for_the_event_of_its_own_id(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    guest.answers = [(0, "@@seen eth1\n")]
    hp.plug(PlugSpec("hn1", "virtio-net-pci", "br1", 7, mac="52:54:01:00:00:07"))
    # virtio: the backend child's event (no data.device) comes first and stays queued.
    backend = {"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/hn1/virtio-backend"}}
    guest.qmp.events = [backend]
    with pytest.raises(UnplugNotCompleted):
        hp.unplug("hn1", Deadline(0.1, "unplug", scaled=False))
    assert guest.qmp.events == [backend]
    hp.pending.clear()
    guest.qmp.events.append({"event": "DEVICE_DELETED", "data": {"device": "hn1"}})
    done = hp.unplug("hn1")
    assert (done.id, done.mechanism) == ("hn1", "acpi-bsel")
    assert guest.qmp.calls[-1] == ("netdev_del", {"id": "hn1.net"})
    assert "hn1" not in hp.plugged and hp.topology == TOPO


def test_second_unplug_while_pending_and_unknown_id(hp: Hotplugger):
    guest: FakeGuest = hp.guest  # type: ignore[assignment]
    hp.request_unplug("nic1")
    with pytest.raises(UnplugPending, match="already in the process of unplug"):
        hp.request_unplug("nic1")
    assert [a for c, a in guest.qmp.calls if c == "device_del"] == [{"id": "nic1"}]
    with pytest.raises(UnknownDevice, match="Device 'nope' not found"):
        hp.request_unplug("nope")


def test_host_reads_back_the_guests_block(tmp_path: Path):
    image = tmp_path / "d.raw"
    image.write_bytes(bytes(BLOCK_SIZE) + block_bytes("hd1", 9, 1, 1))
    assert host_block_ok(image, "hd1", 9)
    assert not host_block_ok(image, "hd1", 8)
