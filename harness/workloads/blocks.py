"""Seeded disk blocks and finding a disk by its controller: what every disk check shares.

A block is one 64-byte line repeated: "pcih NAME seed=S blk=B gen=G" padded to
63 characters plus a newline, so the host can compute what any block must hold
with no help from the guest (the disk load, hotplug's data checks).  A disk is
found by the sysfs PCI path of its controller, never by guessing /dev/sda.
"""

from __future__ import annotations

import hashlib

from harness.errors import HarnessError
from harness.protocols import Shell
from harness.views import sysfs_path

__all__ = ["BLOCK_SIZE", "FIND_SCRIPT", "LINE", "block_bytes", "block_md5", "find_disk",
           "parse_block_devices", "pattern_line"]

BLOCK_SIZE = 64 * 1024
LINE = 64                 # bytes per pattern line, newline included


# --------------------------------------------------------------------------- pattern

def pattern_line(name: str, seed: int, block: int, generation: int) -> str:
    """The 63 visible characters of one line of a block (the guest adds the newline)."""
    text = f"pcih {name} seed={seed} blk={block:06d} gen={generation:06d}"
    if len(text) > LINE - 1:
        raise ValueError(f"pattern line too long for disk name {name!r}")
    return text.ljust(LINE - 1)


def block_bytes(name: str, seed: int, block: int, generation: int,
                block_size: int = BLOCK_SIZE) -> bytes:
    return ((pattern_line(name, seed, block, generation) + "\n") * (block_size // LINE)).encode()


def block_md5(name: str, seed: int, block: int, generation: int,
              block_size: int = BLOCK_SIZE) -> str:
    return hashlib.md5(block_bytes(name, seed, block, generation, block_size)).hexdigest()


# --------------------------------------------------------------------------- finding the disk

FIND_SCRIPT = ("for b in /sys/block/*; do [ -e \"$b/device\" ] && "
               "echo \"$(basename \"$b\") $(readlink -f \"$b/device\")\"; done; true")


def parse_block_devices(text: str) -> dict[str, tuple[str, ...]]:
    """FIND_SCRIPT output -> {block device name: PCI path of its controller}."""
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        name, _, real = line.strip().partition(" ")
        if name and real:
            out[name] = sysfs_path(real)
    return out


def find_disk(shell: Shell, pci_path: tuple[str, ...], what: str) -> str:
    """/dev/NAME of the one disk whose controller sits at `pci_path`."""
    found = parse_block_devices(shell.succeed(FIND_SCRIPT))
    matches = sorted(name for name, path in found.items() if path == pci_path)
    if len(matches) != 1:
        seen = ", ".join(f"{n} at {'/'.join(p) or '?'}" for n, p in sorted(found.items()))
        raise HarnessError(f"{what}: expected one disk behind PCI function "
                           f"{'/'.join(pci_path)}, the guest has {matches or 'none'} there",
                           fix="check that the guest driver bound (lsmod, dmesg)",
                           tail=f"guest block devices: {seen or 'none'}")
    return f"/dev/{matches[0]}"
