"""virtio-pcie-memory-bars: "Express spec requires device can work without IO".

Behind PCIe ports virtio-net/blk/scsi are modern-only (no I/O BAR, device id
0x1040 + type); on pcie.0 and on pc they stay transitional (legacy I/O BAR0).

- Modern-only: the driver is unbound, I/O Space decoding is switched OFF in
  COMMAND (setpci), and the driver is bound again: it must bind with I/O
  decoding off (COMMAND still has it off afterwards) and do verified I/O.
- Transitional: binding turns I/O decoding on (Linux enables every BAR kind
  the function has), so what is checked is that the bound driver keeps
  working, through its memory BARs, after I/O decoding is switched off.

Verified I/O: disks write and read back a random 1 MiB through O_DIRECT, the
NIC downloads a payload from the host and checks its md5.  (BAR-by-BAR
three-view checks live in test_compare.py.)
"""

from __future__ import annotations

import pytest

from harness.guest.functions import config_read, config_write, function_of
from harness.topology import expected_view, topology_from_dict
from harness.topology.placement import resolve
from harness.topology.tree import buses
from harness.views import GUEST_DUMP_SCRIPT, parse_guest_view
from harness.workloads.blocks import find_disk
from harness.workloads.payload import PayloadServer

COMMAND, IO_SPACE = 0x04, 0x0001
VIRTIO_TYPE = {"virtio-net-pci": 1, "virtio-blk-pci": 2, "virtio-scsi-pci": 8}
# What the driver creates below the function once it has bound (and probed).
BOUND_CHILD = {"virtio-net-pci": "virtio*/net/*", "virtio-blk-pci": "virtio*/block/*",
               "virtio-scsi-pci": "virtio*/host*/target*/*/block/*"}
DISK_CHECK = ("dd if=/dev/urandom of=/tmp/vm.pat bs=65536 count=16 2>/dev/null && "
              "dd if=/tmp/vm.pat of={dev} bs=4096 oflag=direct conv=notrunc 2>/dev/null && "
              "[ \"$(md5sum < /tmp/vm.pat | cut -d' ' -f1)\" = \"$(dd if={dev} bs=4096 count=256 "
              "iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\" ] && echo VERIFIED")


def _topology(machine: str):
    if machine == "pc":
        devices = [{"id": "vmblk", "driver": "virtio-blk-pci", "disk": "8M"},
                   {"id": "vmnet", "driver": "virtio-net-pci", "netdev": "vmnet-nd"},
                   {"id": "vmscsi", "driver": "virtio-scsi-pci", "disk": "8M"}]
    else:
        devices = [{"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
                   {"id": "vmblk", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "8M"},
                   {"id": "rp2", "driver": "pcie-root-port", "addr": "3.0"},
                   {"id": "vmnet", "driver": "virtio-net-pci", "bus": "rp2",
                    "netdev": "vmnet-nd"},
                   {"id": "rp3", "driver": "pcie-root-port", "addr": "4.0"},
                   {"id": "vmscsi", "driver": "virtio-scsi-pci", "bus": "rp3", "disk": "8M"},
                   {"id": "vmroot", "driver": "virtio-blk-pci", "addr": "5.0", "disk": "8M"}]
    return topology_from_dict({"machine": machine, "device": devices})


@pytest.mark.seed("virtio-pcie-memory-bars")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_virtio_works_with_io_decoding_off(machine, make_guest):
    topology = _topology(machine)
    net_ip, host_ip = "10.0.20.15", "10.0.20.2"
    with PayloadServer() as server:
        guest = make_guest(topology, netdevs=("user,id=vmnet-nd,net=10.0.20.0/24",))
        model = expected_view(topology)
        view = parse_guest_view(guest.succeed(GUEST_DUMP_SCRIPT)).by_path()
        bus_roles = buses(resolve(topology))
        problems = []
        for dev in topology.devices:
            if dev.driver not in VIRTIO_TYPE:
                continue
            behind_port = bus_roles[topology.bus_of(dev)].role == "slot"
            want = model.function(dev.id)
            got = view[want.path]
            io_bars = [b.index for b in got.bars or () if b.kind == "io"]
            mem = sorted((b.index, b.size, b.is_64bit, b.prefetch) for b in got.bars or ()
                         if b.kind == "mem" and b.index != 6)
            want_mem = sorted((b.index, b.size, b.is_64bit, b.prefetch) for b in want.bars or ()
                              if b.kind == "mem" and b.index != 6)
            want_id = 0x1040 + VIRTIO_TYPE[dev.driver] if behind_port else None
            if behind_port and (io_bars or got.device != want_id):
                problems.append(f"{dev.id} behind a port: I/O BARs {io_bars}, device id "
                                f"{got.device:#x}; spec/seed: none, {want_id:#x}")
            if not behind_port and (io_bars != [0] or (got.device or 0) >= 0x1040):
                problems.append(f"{dev.id} on {topology.bus_of(dev)}: I/O BARs {io_bars}, "
                                f"device id {got.device:#x}; expected transitional (BAR0 I/O)")
            if mem != want_mem:
                problems.append(f"{dev.id}: memory BARs {mem}, model {want_mem}")
            fn = function_of(guest, topology, dev.id)
            driver_dir = "/sys/bus/pci/drivers/virtio-pci"
            if behind_port:
                guest.succeed(f"echo {fn.bdf} > {driver_dir}/unbind")
            command = config_read(guest, fn.bdf, COMMAND)
            config_write(guest, fn.bdf, COMMAND, command & ~IO_SPACE)
            now = config_read(guest, fn.bdf, COMMAND)
            if now & IO_SPACE:
                problems.append(f"{dev.id}: COMMAND still {now:#06x} after clearing I/O Space")
            if behind_port:
                guest.succeed(f"echo {fn.bdf} > {driver_dir}/bind")
                guest.wait_until_succeeds(
                    f"ls -d /sys/bus/pci/devices/{fn.bdf}/{BOUND_CHILD[dev.driver]}", timeout=30)
                fn = function_of(guest, topology, dev.id)
                now = config_read(guest, fn.bdf, COMMAND)
                if now & IO_SPACE:
                    problems.append(f"{dev.id}: binding the driver turned I/O decoding back "
                                    f"on (COMMAND {now:#06x}) on a function without I/O BARs")
            if dev.driver == "virtio-net-pci":
                guest.succeed(f"ip link set {fn.net} up && ip addr replace {net_ip}/24 dev {fn.net}")
                status, out = guest.execute(f"timeout 60 nc {host_ip} {server.port} | md5sum",
                                            timeout=90)
                ok = out.split()[:1] == [server.md5]
            else:
                disk = find_disk(guest, want.path, dev.id)
                status, out = guest.execute(DISK_CHECK.format(dev=disk), timeout=90)
                ok = "VERIFIED" in out
            driver = guest.succeed(f"basename $(readlink /sys/bus/pci/devices/{fn.bdf}/driver)")
            if not ok or driver.strip() != "virtio-pci":
                problems.append(f"{dev.id} with I/O decoding off (COMMAND {now:#06x}): driver "
                                f"{driver.strip()!r}, I/O status {status}, output {out.strip()!r}")
        trouble = guest.console.trouble() + [
            line for line in guest.succeed("dmesg").splitlines()
            if "virtio" in line and ("error" in line.lower() or "fail" in line.lower())]
    assert not problems and not trouble, "\n".join(problems + trouble)
