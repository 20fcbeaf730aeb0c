"""subtractive-decode: a bridge with programming interface 01 forwards every
transaction nobody on the primary side claims, not only its windows (PCI-to-PCI
Bridge spec 1.2, 3.2.5.1; ICH9's DMI-to-PCI bridge 8086:244e is one).

Behaviour, not the class code, decides: behind an i82801b11-bridge sit a std
VGA (BAR2 holds the DISPI ID register) and a transitional virtio-blk (legacy
I/O BAR0, status register at 0x12, unused by the modern driver).  Each is read
where the firmware put it, then its BAR is moved to a free address outside
every bridge window and read again: a subtractive bridge must still deliver.
"""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.guest.functions import (
    bar_address,
    config_read,
    config_write,
    devmem_read,
    find_free,
    function_of,
    port_read,
    resources,
)
from harness.topology import topology_from_dict

COMMAND, CLASS_PROG = 0x04, 0x09
VIRTIO_STATUS, DISPI_ID = 0x12, 0x500


def _topology(machine: str):
    return topology_from_dict({"machine": machine, "device": [
        {"id": "sdb", "driver": "i82801b11-bridge", "addr": "4.0"},
        {"id": "sdvga", "driver": "VGA", "bus": "sdb", "addr": "1.0"},
        {"id": "sdblk", "driver": "virtio-blk-pci", "bus": "sdb", "addr": "2.0",
         "disk": "8M"}]})


def _root_window(tree, address: int):
    return next(r for r in tree if r.name == "PCI Bus 0000:00" and r.contains(address, address))


@pytest.mark.seed("subtractive-decode")
@pytest.mark.known_gap("subtractive-decode-windows-only")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_subtractive_bridge_forwards_outside_its_windows(machine, make_guest):
    topology = _topology(machine)
    guest = make_guest(topology, kernel_args=("iomem=relaxed",))
    bridge = function_of(guest, topology, "sdb")
    vga = function_of(guest, topology, "sdvga")
    blk = function_of(guest, topology, "sdblk")
    prog_if = config_read(guest, bridge.bdf, CLASS_PROG, 8)
    if prog_if != 0x01:
        raise HarnessError(f"i82801b11-bridge prog-if is {prog_if:#04x}, not 01 (subtractive)")
    for fn in (bridge, vga, blk):
        config_write(guest, fn.bdf, COMMAND, config_read(guest, fn.bdf, COMMAND) | 0x3)
    mem, _ = bar_address(guest, vga, 2)
    io, io_size = bar_address(guest, blk, 0)
    ident = devmem_read(guest, mem + DISPI_ID, 16)
    status = port_read(guest, io + VIRTIO_STATUS)[0]
    if ident in (0, 0xFFFF) or status in (0, 0xFF):
        raise HarnessError(f"through the windows: DISPI ID {ident:#x}, virtio status "
                           f"{status:#x}; the devices do not answer at their own BARs")
    iomem, ioports = resources(guest, "iomem"), resources(guest, "ioports")
    new_mem = find_free(iomem, _root_window(iomem, mem), 4096, floor=mem)
    new_io = find_free(ioports, _root_window(ioports, io), io_size, floor=0x1000)
    try:
        config_write(guest, vga.bdf, 0x18, new_mem, 32)
        config_write(guest, blk.bdf, 0x10, new_io | 1, 32)
        moved_ident = devmem_read(guest, new_mem + DISPI_ID, 16)
        moved_status = port_read(guest, new_io + VIRTIO_STATUS)[0]
    finally:
        config_write(guest, vga.bdf, 0x18, mem, 32)
        config_write(guest, blk.bdf, 0x10, io | 1, 32)
    assert (moved_ident, moved_status) == (ident, status), (
        f"outside every window of the subtractive bridge: VGA BAR2 moved {mem:#x} -> "
        f"{new_mem:#x} reads DISPI ID {moved_ident:#06x} (in the window {ident:#06x}); "
        f"virtio I/O BAR0 moved {io:#x} -> {new_io:#x} reads status {moved_status:#04x} "
        f"(in the window {status:#04x})")
