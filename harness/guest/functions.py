"""Raw guest I/O for conformance checks: physical memory, legacy ports, config space.

Why these helpers exist: a conformance test must see what the *bus* returns, not
what a driver makes of it.  So every read goes through the thinnest tool the
guest has:

- physical memory: busybox `devmem` (the Debian kernel has STRICT_DEVMEM and
  IO_STRICT_DEVMEM, so boot with kernel_args=("iomem=relaxed",) when a driver
  claimed the region, or when reading a bridge window);
- legacy I/O ports: `/dev/port` with `dd` (one `inb`/`outb` per byte);
- config space: `setpci` (pciutils) by bus:device.function;
- files: `base64`, so binary tables cross SSH unchanged.

A function is found by its topology path (slot.function from the root bus down,
as in views.pciview), never by a guessed bus number.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.protocols import Shell
from harness.topology import Topology
from harness.views import sysfs_path

#: base64 characters per SSH command (dropbear refuses commands over 9000 bytes)
PUT_CHUNK = 8000

__all__ = [
    "GuestFunction",
    "Resource",
    "bar_address",
    "config_read",
    "config_write",
    "devmem_read",
    "devmem_write",
    "find_free",
    "function_of",
    "functions_by_path",
    "parse_resources",
    "port_read",
    "port_write",
    "put_file",
    "read_file",
    "resources",
]


def read_file(shell: Shell, path: str) -> bytes:
    """The bytes of a guest file (base64 over SSH, so NULs and binary survive)."""
    text = shell.succeed(f"base64 {shlex.quote(path)}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError as exc:
        raise HarnessError(f"guest file {path}: base64 output did not decode ({exc})",
                           tail=text[-500:]) from None


_HEX = re.compile(r"0x([0-9A-Fa-f]+)")


def put_file(shell: Shell, path: str, data: bytes, mode: str = "644") -> None:
    """Copy bytes into a guest file over the SSH session (base64, in chunks)."""
    text = base64.b64encode(data).decode()
    shell.succeed(f": > {path}.b64")
    for start in range(0, len(text), PUT_CHUNK):
        shell.succeed(f"printf %s '{text[start:start + PUT_CHUNK]}' >> {path}.b64")
    shell.succeed(f"base64 -d {path}.b64 > {path} && rm {path}.b64 && chmod {mode} {path}")
    got = shell.succeed(f"md5sum {path}").split()[0]
    want = hashlib.md5(data).hexdigest()
    if got != want:
        raise HarnessError(f"copying {path} into the guest: md5 {got}, expected {want}")


def devmem_read(shell: Shell, address: int, width: int = 32) -> int:
    """One read of `width` bits at guest physical `address` (busybox devmem)."""
    out = shell.succeed(f"devmem {address:#x} {width}")
    m = _HEX.search(out)
    if not m:
        raise HarnessError(f"devmem {address:#x} {width} printed no value",
                           fix='boot with kernel_args=("iomem=relaxed",) if a driver '
                               "claimed the region", tail=out)
    return int(m.group(1), 16)


def devmem_write(shell: Shell, address: int, value: int, width: int = 32) -> None:
    shell.succeed(f"devmem {address:#x} {width} {value:#x}")


def port_read(shell: Shell, port: int, count: int = 1) -> bytes:
    """`count` bytes from legacy I/O port `port` upward, one inb each (/dev/port)."""
    out = shell.succeed(f"dd if=/dev/port bs=1 skip={port} count={count} 2>/dev/null "
                        "| od -An -v -tx1")
    data = bytes.fromhex("".join(out.split()))
    if len(data) != count:
        raise HarnessError(f"reading {count} byte(s) at I/O port {port:#x} gave {len(data)}",
                           tail=out)
    return data


def port_write(shell: Shell, port: int, data: bytes) -> None:
    """Write `data` to legacy I/O ports `port` upward, one outb each (/dev/port)."""
    escaped = "".join(f"\\{b:03o}" for b in data)
    shell.succeed(f"printf '{escaped}' | dd of=/dev/port bs=1 seek={port} "
                  f"count={len(data)} conv=notrunc 2>/dev/null")


def config_read(shell: Shell, bdf: str, offset: int, width: int = 16) -> int:
    """A config-space register of function `bdf` (setpci; width 8, 16 or 32)."""
    suffix = {8: "b", 16: "w", 32: "l"}[width]
    out = shell.succeed(f"setpci -s {bdf} {offset:#x}.{suffix} 2>/dev/null")
    return int(out.strip().splitlines()[-1], 16)


def config_write(shell: Shell, bdf: str, offset: int, value: int, width: int = 16) -> None:
    suffix = {8: "b", 16: "w", 32: "l"}[width]
    shell.succeed(f"setpci -s {bdf} {offset:#x}.{suffix}={value:x}")


@dataclass(frozen=True)
class GuestFunction:
    """A PCI function as the guest names it, found by its topology path."""

    path: tuple[str, ...]
    bdf: str                      # "0000:05:04.0"
    irq: int                      # /sys/.../irq: the legacy INT#x line Linux routed
    virtio: str | None = None     # "virtio3": the name /proc/interrupts uses
    block: str | None = None      # "vda" for a virtio-blk disk
    net: str | None = None        # "eth1": the interface of a NIC, whatever its driver
    msi: bool = False             # msi_irqs present: MSI or MSI-X in use

    @property
    def short_bdf(self) -> str:
        return self.bdf.split(":", 1)[1]


_FUNCTIONS_SCRIPT = r"""
for d in /sys/bus/pci/devices/*; do
  v=; b=; n=
  for x in "$d"/virtio*; do [ -d "$x" ] && v=${x##*/}; done
  if [ -n "$v" ]; then
    for x in "$d/$v"/block/*; do [ -e "$x" ] && b=${x##*/}; done
    for x in "$d/$v"/net/*; do [ -e "$x" ] && n=${x##*/}; done
  fi
  # Every other NIC driver (e1000, e1000e, ...) puts its interface under net/.
  for x in "$d"/net/*; do [ -e "$x" ] && n=${x##*/}; done
  m=0; [ -d "$d/msi_irqs" ] && [ -n "$(ls "$d/msi_irqs")" ] && m=1
  echo "fn $(readlink -f "$d") $(cat "$d/irq") v=$v b=$b n=$n m=$m"
done
"""


def functions_by_path(shell: Shell) -> dict[tuple[str, ...], GuestFunction]:
    """Every PCI function of the guest, keyed by topology path."""
    out: dict[tuple[str, ...], GuestFunction] = {}
    for line in shell.succeed(_FUNCTIONS_SCRIPT).splitlines():
        parts = line.split()
        if len(parts) != 7 or parts[0] != "fn":
            continue
        real, irq = parts[1], int(parts[2])
        fields = dict(p.split("=", 1) for p in parts[3:])
        path = sysfs_path(real)
        out[path] = GuestFunction(path=path, bdf=real.rsplit("/", 1)[1], irq=irq,
                                  virtio=fields["v"] or None, block=fields["b"] or None,
                                  net=fields["n"] or None, msi=fields["m"] == "1")
    return out


# --------------------------------------------------------------------------- address space

@dataclass(frozen=True)
class Resource:
    """One line of /proc/iomem or /proc/ioports; `depth` is its indentation level."""

    start: int
    end: int
    name: str
    depth: int

    def contains(self, start: int, end: int) -> bool:
        return self.start <= start and end <= self.end

    def overlaps(self, start: int, end: int) -> bool:
        return not (end < self.start or self.end < start)


_RES_LINE = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_resources(text: str) -> tuple[Resource, ...]:
    """Parse /proc/iomem or /proc/ioports (two spaces of indentation per level)."""
    out = []
    for line in text.splitlines():
        m = _RES_LINE.match(line.rstrip())
        if m:
            out.append(Resource(int(m.group(2), 16), int(m.group(3), 16), m.group(4),
                                len(m.group(1)) // 2))
    return tuple(out)


def resources(shell: Shell, kind: str) -> tuple[Resource, ...]:
    """The guest's "iomem" or "ioports" tree (read as root, so addresses are real)."""
    return parse_resources(shell.succeed(f"cat /proc/{kind}"))


def find_free(tree: tuple[Resource, ...], within: Resource, size: int,
              *, align: int | None = None, floor: int = 0) -> int:
    """The lowest `align`-aligned block of `size` bytes inside `within` (and at or
    above `floor`) that no other resource of the tree overlaps."""
    align = align or size
    others = [r for r in tree if r != within and r.depth > within.depth
              and r.overlaps(within.start, within.end)]
    addr = max(within.start, floor)
    addr = (addr + align - 1) // align * align
    while addr + size - 1 <= within.end:
        clash = [r for r in others if r.overlaps(addr, addr + size - 1)]
        if not clash:
            return addr
        addr = (max(r.end for r in clash) + 1 + align - 1) // align * align
    raise HarnessError(f"no free {size:#x}-byte block inside {within.name} "
                       f"{within.start:#x}-{within.end:#x}")


def function_of(shell: Shell, topology: Topology, device_id: str) -> GuestFunction:
    """The guest's view of topology device `device_id` (found by its path)."""
    from harness.topology.placement import resolve
    from harness.topology.tree import path_of

    topo = resolve(topology)
    path = path_of(topo, topo.device(device_id))
    found = functions_by_path(shell)
    if path not in found:
        raise HarnessError(f"device {device_id} ({'/'.join(path)}) is not in the guest's "
                           "/sys/bus/pci", tail="\n".join("/".join(p) for p in sorted(found)))
    return found[path]


def bar_address(shell: Shell, fn: GuestFunction, index: int) -> tuple[int, int]:
    """(start, size) of BAR `index` from sysfs `resource` (0, 0 when unassigned)."""
    lines = shell.succeed(f"cat /sys/bus/pci/devices/{fn.bdf}/resource").splitlines()
    start, end, _flags = (int(x, 16) for x in lines[index].split()[:3])
    return (start, end - start + 1) if end > start else (0, 0)
