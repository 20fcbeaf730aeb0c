"""The guest view: what the guest's kernel says about its PCI functions.

GUEST_DUMP_SCRIPT runs in the guest by busybox sh; it prints raw sysfs (config
space as hex, resource, driver link) and this module decodes it with
views.configspace, so the verdict does not depend on lspci's wording.  The
parser produces views.pciview.PciView, the shape the model also uses.
"""

from __future__ import annotations

import re
from typing import Any

from harness.errors import HarnessError
from harness.views.configspace import decode, function_from_facts
from harness.views.pciview import Bar, PciView

__all__ = ["GUEST_DUMP_SCRIPT", "GUEST_LSPCI_SCRIPT", "GuestDumpError", "parse_guest_view",
           "sysfs_path"]


# busybox sh.  One "@@ fn" block per function, then one "@@ configs" section.
# Few processes (under TCG each fork+exec costs milliseconds, more right after a
# migration, when QEMU has translated none of the guest's code): shell builtins
# read the small sysfs files, `cd -P` + $PWD resolve the symlinks (readlink
# would fork twice per function), and the first 256 config bytes of every
# function (the standard header and capabilities, all configspace.decode
# reads) come from one `head | od` for all functions, one line of hex bytes
# each, in the order the section's header names them (hexdump if od lacks -w).
GUEST_DUMP_SCRIPT = r"""
names=""
set --
for d in /sys/bus/pci/devices/*; do
  echo "@@ fn ${d##*/}"
  cd -P "$d" && echo "sysfs $PWD"
  drv=""; [ -e "$d/driver" ] && cd -P "$d/driver" && drv=$PWD
  echo "driver ${drv##*/}"
  irq=""; read -r irq < "$d/irq"; echo "irq $irq"
  for f in current_link_speed current_link_width max_link_speed max_link_width; do
    [ -r "$d/$f" ] && read -r v < "$d/$f" 2>/dev/null && echo "$f $v"
  done
  while read -r line; do echo "res $line"; done < "$d/resource"
  names="$names ${d##*/}"
  set -- "$@" "$d/config"
done
cd /
echo "@@ configs$names"
if [ $# -gt 0 ]; then
  head -q -c 256 "$@" | od -An -v -tx1 -w256 2>/dev/null ||
    head -q -c 256 "$@" | hexdump -v -e '256/1 "%02x " "\n"'
fi
for s in /sys/bus/pci/slots/*; do
  [ -r "$s/address" ] && read -r a < "$s/address" && echo "@@ slot ${s##*/} $a"
done
echo "@@ end"
"""
# Appended for people (kept as an artifact next to the views), never parsed.
GUEST_LSPCI_SCRIPT = r"""
if command -v lspci >/dev/null 2>&1; then echo "@@ lspci"; lspci -vvv -nn; fi
"""

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:([0-9a-f]{2})\.([0-7])$")
IORESOURCE_IO, IORESOURCE_MEM = 0x100, 0x200
IORESOURCE_PREFETCH, IORESOURCE_MEM_64 = 0x2000, 0x100000
# Ranges the kernel pins without a BAR behind them: the legacy IDE ports
# (0x1f0, 0x3f6, 0x170, 0x376) a compatibility-mode IDE function gets in slots
# 0-3 (drivers/pci/probe.c LEGACY_IO_RESOURCE).  Not BARs: QEMU lists none there.
IORESOURCE_PCI_FIXED = 0x10
IORESOURCE_ROM_SHADOW = 0x2  # bus-specific bit of a ROM resource: "use the shadow copy"


def sysfs_path(real_path: str) -> tuple[str, ...]:
    """/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0 -> ("02.0", "00.0")."""
    parts = []
    for comp in real_path.strip().split("/"):
        m = _BDF.match(comp)
        if m:
            parts.append(f"{m.group(1)}.{m.group(2)}")
    return tuple(parts)


def _guest_bars(lines: list[str]) -> tuple[Bar, ...]:
    bars = []
    for index, line in enumerate(lines[:7]):
        start, end, flags = (int(x, 16) for x in line.split()[:3])
        if not flags & (IORESOURCE_IO | IORESOURCE_MEM) or end < start:
            continue
        if flags & IORESOURCE_PCI_FIXED and index < 6:
            continue
        if index == 6 and flags & IORESOURCE_PCI_FIXED and flags & IORESOURCE_ROM_SHADOW:
            # The boot VGA's resource 6 is the legacy shadow copy at 0xc0000
            # (128 KiB, arch/x86/pci/fixup.c pci_fixup_video): the guest tells
            # that the function has a ROM, not the ROM BAR's size or address.
            bars.append(Bar(index=6, kind="mem"))
            continue
        io = bool(flags & IORESOURCE_IO)
        rom = index == 6  # Linux marks ROMs prefetchable; QEMU does not: not compared
        bars.append(Bar(index=index, kind="io" if io else "mem", size=end - start + 1,
                        is_64bit=None if io or rom else bool(flags & IORESOURCE_MEM_64),
                        prefetch=None if io or rom else bool(flags & IORESOURCE_PREFETCH),
                        address=start))
    return tuple(bars)


class GuestDumpError(HarnessError):
    """GUEST_DUMP_SCRIPT output that does not add up."""


def parse_guest_view(text: str) -> PciView:
    """Parse GUEST_DUMP_SCRIPT output into a PciView.

    Config bytes come from the "@@ configs NAME..." section (one hex line per
    name) or, in older dumps, from a "config" line inside the function's block.
    """
    blocks: dict[str, dict[str, Any]] = {}
    block: dict[str, Any] | None = None
    section = ""
    config_names: list[str] = []
    config_lines: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "@@":
            section, _, rest = value.partition(" ")
            block = None
            if section == "end":
                break
            if section == "fn":
                block = blocks.setdefault(rest.strip(), {"res": [], "driver": ""})
            elif section == "configs":
                config_names = rest.split()
        elif section == "configs":
            if line.strip():
                config_lines.append(line)
        elif block is not None:
            if key == "res":
                block["res"].append(value)
            elif key == "config":  # "8680..." or "86 80 ..." (bytes.fromhex skips spaces)
                block[key] = " ".join(value.split())
            elif key in ("sysfs", "driver"):
                block[key] = value.strip()
    if len(config_lines) != len(config_names):
        raise GuestDumpError(
            f"the guest's config-space dump has {len(config_lines)} lines for "
            f"{len(config_names)} functions (did a function come or go during the dump?)")
    for name, hexline in zip(config_names, config_lines):
        if name in blocks:
            blocks[name]["config"] = " ".join(hexline.split())
    funcs = []
    for found in blocks.values():
        if "config" not in found or "sysfs" not in found:
            continue
        facts = decode(bytes.fromhex(found["config"]))
        funcs.append(function_from_facts(sysfs_path(found["sysfs"]), facts,
                                 bars=_guest_bars(found["res"]), driver=found["driver"]))
    return PciView(source="guest", functions=tuple(sorted(funcs, key=lambda f: f.path)))
