"""The guest's ACPI tables: fetch over SSH, decompile with iasl, read the PCI links.

Why the guest's copy: the DSDT the guest's OS obeys is the one QEMU built for
this exact machine (device set, machine type, hotplug options), and it reaches
the guest through fw_cfg and the firmware.  Reading /sys/firmware/acpi/tables
in the guest checks what the OS really got.

Decompiling uses the host's `iasl -d` (acpica-tools, installed by
bin/bootstrap.sh); parsing the ASL text keeps the verdict independent of the
binary AML encoding.  A PCI interrupt link is a Device with
_HID PNP0C0F; its interrupt descriptors live in _PRS/_CRS objects or in a
method the link calls (QEMU's IQCR), and each says its trigger mode, polarity
and sharing, e.g. `Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, )`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError, UserError
from harness.guest.functions import read_file
from harness.protocols import Shell

__all__ = ["InterruptDescriptor", "InterruptLink", "decompile", "fetch_table",
           "interrupt_links", "pci_interrupt_links"]

PCI_LINK_HID = "PNP0C0F"


@dataclass(frozen=True)
class InterruptDescriptor:
    """One Interrupt () resource descriptor and the object that holds it."""

    where: str                  # "_PRS", "_CRS", or "_CRS via IQCR"
    mode: str                   # "Level" | "Edge"
    polarity: str               # "ActiveHigh" | "ActiveLow"
    sharing: str                # "Shared" | "Exclusive" | ...
    interrupts: tuple[int, ...]

    @property
    def declaration(self) -> str:
        """The flags as the ASL writes them: "Level, ActiveHigh, Shared"."""
        return f"{self.mode}, {self.polarity}, {self.sharing}"


@dataclass(frozen=True)
class InterruptLink:
    """A PCI interrupt link device (LNKA.., GSIA..) and its descriptors."""

    name: str
    uid: str | None
    descriptors: tuple[InterruptDescriptor, ...]

    def describe(self) -> str:
        parts = [f"{d.where}: Interrupt ({d.declaration}) {{{', '.join(map(str, d.interrupts))}}}"
                 for d in self.descriptors]
        return f"{self.name}: " + "; ".join(parts)


def fetch_table(shell: Shell, name: str = "DSDT") -> bytes:
    """The raw AML of an ACPI table as the guest's kernel sees it."""
    data = read_file(shell, f"/sys/firmware/acpi/tables/{name}")
    if data[:4] != name.encode()[:4]:
        raise HarnessError(f"guest ACPI table {name} does not start with its signature",
                           tail=repr(data[:16]))
    return data


def decompile(aml: bytes, workdir: Path | None = None, iasl: str = "iasl") -> str:
    """ASL text of an AML table (`iasl -d`); raises UserError without acpica-tools."""
    tool = shutil.which(iasl)
    if tool is None:
        raise UserError("iasl (acpica-tools) is not installed",
                        fix="run bin/bootstrap.sh or apt-get install acpica-tools")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / "table.dat"
        src.write_bytes(aml)
        proc = subprocess.run([tool, "-d", str(src)], cwd=tmp, capture_output=True,
                              text=True, timeout=120, check=False)
        out = Path(tmp) / "table.dsl"
        if proc.returncode != 0 or not out.exists():
            raise HarnessError("iasl -d could not decompile the table",
                               tail=(proc.stdout + proc.stderr)[-2000:])
        text = out.read_text(errors="replace")
        if workdir is not None:
            (workdir / "table.dsl").write_text(text)
        return text


_DEVICE = re.compile(r"\bDevice \((\w+)\)")
_METHOD = re.compile(r"\bMethod \((\w+),")
_HOLDER = re.compile(r"\b(?:Name|Method) \((\w+)")
_INTERRUPT = re.compile(
    r"\bInterrupt \(\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*,[^)]*\)\s*\{([^}]*)\}")
_UID = re.compile(r"Name \(_UID,\s*([^)]+)\)")


def _block(text: str, start: int) -> tuple[int, int]:
    """(open, close) offsets of the {...} block that follows `start`."""
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return open_at, i
    raise HarnessError("unbalanced braces in the decompiled table")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _descriptors(body: str, default_where: str) -> list[InterruptDescriptor]:
    out = []
    for m in _INTERRUPT.finditer(body):
        holders = _HOLDER.findall(body[:m.start()])
        where = holders[-1] if holders else default_where
        numbers = tuple(int(x, 0) for x in re.findall(r"0x[0-9A-Fa-f]+|\b\d+\b", m.group(5)))
        out.append(InterruptDescriptor(where=where, mode=m.group(2), polarity=m.group(3),
                                       sharing=m.group(4), interrupts=numbers))
    return out


def interrupt_links(dsl: str, hid: str = PCI_LINK_HID) -> tuple[InterruptLink, ...]:
    """Every Device with _HID `hid` and its Interrupt descriptors, including those
    built by a method the device calls (QEMU's `IQCR` for LNKx._CRS)."""
    text = _strip_comments(dsl)
    methods: dict[str, str] = {}
    for m in _METHOD.finditer(text):
        a, b = _block(text, m.end())
        methods.setdefault(m.group(1), text[a:b + 1])
    links = []
    for m in _DEVICE.finditer(text):
        a, b = _block(text, m.end())
        body = text[a:b + 1]
        nested = _DEVICE.search(body)
        own = body if nested is None else body[:nested.start()]
        if f'"{hid}"' not in own:
            continue
        descriptors = _descriptors(own, "?")
        for called in sorted(set(re.findall(r"\b(\w{4}) \(", own))):
            if called in methods and not called.startswith("_"):
                for d in _descriptors(methods[called], called):
                    holders = [h for h in _HOLDER.findall(own)
                               if re.search(rf"(?:Name|Method) \({h}\b[^{{]*\{{[^}}]*\b{called} \(",
                                            own, re.DOTALL)]
                    where = f"{holders[0]} via {called}" if holders else f"via {called}"
                    descriptors.append(InterruptDescriptor(where, d.mode, d.polarity,
                                                           d.sharing, d.interrupts))
        uid = _UID.search(own)
        links.append(InterruptLink(m.group(1), uid.group(1).strip() if uid else None,
                                   tuple(descriptors)))
    return tuple(links)


def pci_interrupt_links(shell: Shell, workdir: Path | None = None) -> tuple[InterruptLink, ...]:
    """Fetch the guest's DSDT, decompile it and return its PCI interrupt links."""
    return interrupt_links(decompile(fetch_table(shell, "DSDT"), workdir))


def prt_links(dsl: str) -> frozenset[str]:
    """Names of the link devices the PCI routing tables (_PRT, and the PRTx
    packages q35's _PRT returns) refer to: the PCI INT#x links, as opposed to
    other PNP0C0F devices such as pc's LNKS (the SCI)."""
    text = _strip_comments(dsl)
    names: set[str] = set()
    for m in re.finditer(r"\b(?:Method \(_PRT\b|Name \(PRT\w\b)", text):
        a, b = _block(text, m.end())
        names.update(re.findall(r"\b((?:LNK|GSI)\w)\b", text[a:b + 1]))
    return frozenset(names)
