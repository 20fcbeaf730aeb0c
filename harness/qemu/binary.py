"""A QEMU binary: where it is, its version, the machine types it knows."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import QemuNotFound, UserError

DEFAULT_NAME = "qemu-system-x86_64"


@dataclass(frozen=True)
class QemuBinary:
    path: Path
    version: str            # "7.2.22"
    full_version: str       # first line of -version
    machines: frozenset[str]  # every name and alias from -machine help
    aliases: tuple[tuple[str, str], ...] = ()  # ("q35", "pc-q35-7.2"): what an alias means here

    def resolve_machine(self, machine: str) -> str:
        """The versioned machine type an alias stands for on this binary ("q35" ->
        "pc-q35-7.2"); a versioned name is returned as it is."""
        return dict(self.aliases).get(machine, machine)

    def check_machine(self, machine: str) -> None:
        if machine not in self.machines:
            close = sorted(m for m in self.machines if m.startswith(machine.split("-")[0]))[:8]
            raise UserError(
                f"unknown machine type {machine!r} for {self.path} (QEMU {self.version})",
                fix=f"use pc, q35 or a versioned type such as {', '.join(close) or 'pc-q35-7.2'}")

    def identity(self) -> str:
        """Changes when the binary is replaced: for cache keys."""
        st = self.path.stat()
        return f"{self.path}:{st.st_size}:{st.st_mtime_ns}:{self.version}"


def _run(path: str, *args: str) -> str:
    proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise QemuNotFound(f"{path} {' '.join(args)} failed: {proc.stderr.strip()[:300]}",
                           fix="pass a working qemu-system-x86_64 with --qemu-binary")
    return proc.stdout


@functools.cache
def _inspect(path: str) -> QemuBinary:
    first = _run(path, "-version").splitlines()[0]
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", first)
    if not match:
        raise QemuNotFound(f"{path} does not look like QEMU ({first!r})",
                           fix="pass a qemu-system-x86_64 binary with --qemu-binary")
    machines: set[str] = set()
    aliases: list[tuple[str, str]] = []
    for line in _run(path, "-machine", "help").splitlines()[1:]:
        parts = line.split()
        if parts:
            machines.add(parts[0])
            alias = re.search(r"\(alias of ([\w.-]+)\)", line)
            if alias:
                machines.add(alias.group(1))
                aliases.append((parts[0], alias.group(1)))
    return QemuBinary(Path(path), match.group(1), first, frozenset(machines), tuple(aliases))


def find_qemu(explicit: str | os.PathLike[str] | None = None) -> QemuBinary:
    """--qemu-binary, else $PCI_HARNESS_QEMU, else qemu-system-x86_64 on PATH."""
    wanted = str(explicit) if explicit else os.environ.get("PCI_HARNESS_QEMU") or DEFAULT_NAME
    resolved = shutil.which(wanted)
    if resolved is None:
        if explicit or os.environ.get("PCI_HARNESS_QEMU"):
            raise QemuNotFound(f"QEMU binary {wanted} does not exist or is not executable",
                               fix="check the path given to --qemu-binary")
        raise QemuNotFound("no qemu-system-x86_64 on PATH",
                           fix="install it with `apt-get install qemu-system-x86` "
                               "(bin/pci-harness does this as root) or pass --qemu-binary PATH")
    return _inspect(str(Path(resolved).resolve()))
