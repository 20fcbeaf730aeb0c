"""Surprise removal and misuse: each gets a clear error, and the guest stays healthy.

- unplug of a disk while the guest writes to it: the unplug completes, the
  writer sees I/O errors and stops, the guest keeps answering;
- a second device_del while the first is pending: the harness refuses it;
  what QEMU itself does depends on the mechanism (below);
- plugging into an occupied slot, unplugging an id that does not exist: a
  named harness error, and QEMU's own message when QEMU is asked.

What QEMU does with a raw second device_del (measured on 7.2.22 and 10.0.2):
ACPI (pc BSEL, q35 acpi-pcihp) accepts it and still deletes the device once;
native PCIe refuses it, because a second attention-button press would cancel
the unplug -- "already in the process of unplug" within 5 s, "guest is busy
(power indicator blinking)" after that while the guest still blinks (timing,
not version: facts.NATIVE_SECOND_UNPLUG_REFUSALS); SHPC accepts it, and the
guest's shpchp takes it as that cancelling second press.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded
from harness.guest.running import Guest
from harness.qemu.facts import (
    NATIVE_SECOND_UNPLUG_REFUSALS,
    SHPC_SECOND_UNPLUG_REFUSAL,
    parse_version,
)
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.hotplug.io import IoLoad
from harness.scenarios.hotplug.plug import (
    Hotplugger,
    PlugRefused,
    PlugSpec,
    SlotOccupied,
    UnknownDevice,
    UnplugPending,
)
from harness.topology import topology_from_dict

TOPOLOGIES = {
    "pc": {"machine": "pc", "device": [
        {"id": "br1", "driver": "pci-bridge", "addr": "4.0", "chassis_nr": 1},
        {"id": "nic1", "driver": "e1000", "bus": "br1", "addr": "3.0"},
    ]},
    "q35": {"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
        {"id": "nic1", "driver": "e1000e", "bus": "rp2"},
    ]},
}
# (machine, bus for the new disk, occupied bus and slot)
CASES = [
    pytest.param("pc", "br1", ("br1", 3), marks=pytest.mark.seed("bridge-hotplug-acpi-bsel"),
                 id="pc"),
    pytest.param("q35", "rp1", ("rp2", 0), marks=pytest.mark.seed("q35-hotplug"), id="q35"),
]
# Kernel complaints a surprise removal may legitimately cause; anything else
# (oops, panic, hung task, IRQ trouble) is a failure.
IO_ERROR_LINE = re.compile(r"I/O error|Buffer I/O|blk_update_request|critical medium error")

def _record(request: pytest.FixtureRequest, key: str, value: object) -> None:
    """A figure for the report (user_properties, as the plugin's boot_s)."""
    request.node.user_properties.append((key, value))



def _find_id(query_pci: list[dict[str, Any]], qdev_id: str) -> dict[str, Any] | None:
    """The query-pci entry of device QDEV_ID on any bus, behind any bridge."""
    todo = [d for bus in query_pci for d in bus["devices"]]
    while todo:
        dev = todo.pop()
        if dev.get("qdev_id") == qdev_id:
            return dev
        todo += dev.get("pci_bridge", {}).get("devices", [])
    return None


def _healthy(guest: Guest) -> None:
    assert guest.qmp is not None and guest.console is not None
    assert guest.succeed("echo alive").strip() == "alive"
    assert guest.qmp.execute("query-status")["status"] == "running"
    trouble = [t for t in guest.console.trouble() if not IO_ERROR_LINE.search(t)]
    assert trouble == [], f"kernel trouble on the console: {trouble}"


@pytest.mark.parametrize(("machine", "bus", "occupied"), CASES)
def test_misuse_gets_a_clear_error(make_guest, artifacts: Path, machine, bus, occupied):
    guest = make_guest(topology_from_dict(TOPOLOGIES[machine]))
    hp = Hotplugger(guest, artifacts / "hotplug")
    obus, oslot = occupied
    # Occupied slot: the harness names the occupant; QEMU says it in its words.
    with pytest.raises(SlotOccupied, match=rf"slot {oslot:#x} of bus '{obus}' is occupied "
                                           r"by nic1"):
        hp.plug(PlugSpec("x1", "virtio-blk-pci", obus, oslot))
    with pytest.raises(PlugRefused) as info:
        hp.plug(PlugSpec("x2", "virtio-blk-pci", obus, oslot), preflight=False)
    assert "not available" in info.value.desc and "nic1" in info.value.desc, info.value.desc
    assert hp.plugged == {} and hp.topology == guest.plan.topology
    # The refused plug removed its block backend again: the node name is free.
    nodes = {n["node-name"] for n in guest.qmp.execute("query-named-block-nodes")}
    assert "x2.disk" not in nodes, sorted(nodes)
    # Unknown id: QEMU's DeviceNotFound, carried by a named error.
    with pytest.raises(UnknownDevice, match="Device 'nope' not found"):
        hp.unplug("nope")
    # Second device_del while the first is pending.
    plugged = hp.plug(PlugSpec("hd1", "virtio-blk-pci", bus, 5 if machine == "pc" else 0))
    assert plugged.mechanism in ("acpi-bsel", "acpi-pcihp")
    # Paused, the guest cannot eject hd1 between the requests: on 10.0.2 the
    # ACPI unplug once finished before the raw second request went out, and
    # QEMU rightly answered "Device 'hd1' not found".  The ACPI request itself
    # only latches the GPE; the guest acts on it after `cont`.
    guest.qmp.execute("stop")
    try:
        hp.request_unplug("hd1")
        with pytest.raises(UnplugPending, match="already in the process of unplug"):
            hp.request_unplug("hd1")
        # QEMU itself, on ACPI: the raw second request is accepted ...
        assert guest.qmp.execute("device_del", {"id": "hd1"}) == {}
    finally:
        guest.qmp.execute("cont")
    hp.wait_unplugged("hd1", Deadline(30, "unplug of hd1"))
    # ... and the device is deleted once: no second DEVICE_DELETED for the id.
    with pytest.raises(DeadlineExceeded):
        guest.qmp.wait_event("DEVICE_DELETED", Deadline(2, "a duplicate DEVICE_DELETED"),
                             match=lambda e: e.get("data", {}).get("device") == "hd1")
    # Positively: hd1 is gone and its slot is free again (no leftover request
    # hangs on it), and an unplug there brings its DEVICE_DELETED, so the quiet
    # 2 s above was not a deaf event stream.
    assert _find_id(guest.qmp.execute("query-pci"), "hd1") is None, "hd1 still in query-pci"
    again = hp.plug(PlugSpec("hd2", "virtio-blk-pci", bus, plugged.spec.slot))
    assert again.path == plugged.path and again.guest_name, again
    hp.unplug("hd2", Deadline(30, "unplug of hd2 in hd1's slot"))
    _healthy(guest)


@pytest.mark.seed("q35-hotplug")
def test_second_device_del_on_native_and_shpc(make_guest, artifacts: Path, request):
    topo = topology_from_dict({"machine": "q35", "acpi_hotplug": False, "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
        {"id": "ppb", "driver": "pcie-pci-bridge", "bus": "rp2"},
        {"id": "net1", "driver": "virtio-net-pci", "bus": "ppb", "addr": "1.0"},
    ]})
    guest = make_guest(topo)
    hp = Hotplugger(guest, artifacts / "hotplug")
    # Native PCIe: QEMU refuses the second request itself: inside the 5 s pending
    # window in qdev's words, after it (the guest still blinking) in pcie.c's.
    refusals = NATIVE_SECOND_UNPLUG_REFUSALS.at(parse_version(guest.plan.binary.version))
    native = hp.plug(PlugSpec("hd1", "virtio-blk-pci", "rp1", 0))
    assert native.mechanism == "pcie-native"
    hp.request_unplug("hd1")
    with pytest.raises(QmpCommandError, match="|".join(map(re.escape, refusals))) as refused:
        guest.qmp.execute("device_del", {"id": "hd1"})
    _record(request, "second_device_del_refusal", refused.value.desc)
    hp.wait_unplugged("hd1", Deadline(30, "native unplug of hd1"))
    # SHPC, once the guest has taken the first request as a button press
    # (shpchp then waits 5 s with the power indicator blinking): 7.2 passes the
    # second request on as a second press, which cancels the unplug (the device
    # stays); from 8.0 QEMU refuses it and the first unplug completes.
    # (Sent before the guest read the first event, both presses merge into one.)
    shpc_refusal = SHPC_SECOND_UNPLUG_REFUSAL.at(parse_version(guest.plan.binary.version))
    shpc = hp.plug(PlugSpec("hn1", "e1000", "ppb", 5, mac="52:54:01:00:03:05"))
    assert shpc.mechanism == "shpc"
    hp.request_unplug("hn1")
    guest.wait_until_succeeds("dmesg | grep -q 'powering off due to button press'", 30)
    if shpc_refusal is not None:
        with pytest.raises(QmpCommandError, match=re.escape(shpc_refusal)):
            guest.qmp.execute("device_del", {"id": "hn1"})
        hp.wait_unplugged("hn1", Deadline(30, "SHPC unplug after a refused second request"))
        assert _find_id(guest.qmp.execute("query-pci"), "hn1") is None, "hn1 still listed"
        guest.wait_until_succeeds(f"test ! -e /sys/class/net/{shpc.guest_name}", 30)
        _healthy(guest)
        return
    assert guest.qmp.execute("device_del", {"id": "hn1"}) == {}
    guest.wait_until_succeeds("dmesg | grep -q 'action canceled due to button press'", 30)
    with pytest.raises(DeadlineExceeded):
        guest.qmp.wait_event("DEVICE_DELETED", Deadline(8, "a cancelled SHPC unplug"),
                             match=lambda e: e.get("data", {}).get("device") == "hn1")
    # Positively: the device is still there for QEMU and for the guest.
    assert _find_id(guest.qmp.execute("query-pci"), "hn1") is not None, "hn1 left query-pci"
    guest.succeed(f"test -e /sys/class/net/{shpc.guest_name}")
    # A fresh request after the cancellation goes through.
    hp.pending.pop("hn1")
    hp.unplug("hn1", Deadline(30, "SHPC unplug after a cancelled one"))
    _healthy(guest)


@pytest.mark.parametrize(("machine", "bus", "occupied"), CASES)
def test_surprise_unplug_with_io_running(make_guest, artifacts: Path, request, machine, bus,
                                        occupied):
    guest = make_guest(topology_from_dict(TOPOLOGIES[machine]))
    hp = Hotplugger(guest, artifacts / "hotplug")
    plugged = hp.plug(PlugSpec("hd1", "virtio-blk-pci", bus, 6 if machine == "pc" else 0,
                               disk_bytes=256 * 1024 * 1024))
    io = IoLoad(guest, f"/dev/{plugged.guest_name}")
    io.start()
    running = io.wait(lambda s: s.ok >= 3 or s.stopped, Deadline(30, "I/O loop running"))
    assert running.ok >= 3 and running.errors == 0, running
    unplugged = hp.unplug("hd1", Deadline(30, "unplug with I/O running"))  # no hang
    final = io.wait(lambda s: s.stopped, Deadline(30, "the writer notices the removal"))
    assert final.errors >= 1, f"no I/O error reached the writer after the unplug: {final}"
    assert guest.execute(f"test -b /dev/{plugged.guest_name}")[0] != 0, (
        f"/dev/{plugged.guest_name} still exists after DEVICE_DELETED")
    _healthy(guest)
    _record(request, "unplug_s:with-io", round(unplugged.seconds, 3))
    _record(request, "writer", f"ok={final.ok} errors={final.errors}: {final.error_text[-200:]}")
