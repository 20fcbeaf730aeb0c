"""Where a QEMU binary's firmware and modules are: any QEMU by path.

`--qemu-binary` may name
- an installed binary (/usr/bin, /usr/local/bin): QEMU finds its own files;
- a binary unpacked under some prefix (`dpkg -x qemu-system-x86_*.deb /opt/q`,
  `make install DESTDIR=...`): its firmware is in <prefix>/usr/share/qemu and,
  on Debian, <prefix>/usr/share/seabios, its modules in
  <prefix>/usr/lib/x86_64-linux-gnu/qemu -- but the binary looks in the
  system's directories, where it finds the host QEMU's files.  Worst case, a
  10.0.2 that finds a 7.2 module aborts ("Only modules from the same build can
  be loaded", assertion in module_load_dso) at the first qom-list-types;
- a QEMU build directory (build/qemu-system-x86_64): firmware in build/pc-bios
  or the source tree's pc-bios/, modules next to the binary.

For the last two the harness runs QEMU through a small launcher script that
sets QEMU_MODULE_DIR and the `-L` firmware directories (QEMU searches `-L`
directories before its built-in path).  A launcher is a plain file a person
can run too, so reproduce.sh and every other launch point work unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from harness.errors import QemuNotFound
from harness.paths import cache_root

#: The firmware the guests need first: SeaBIOS for pc and q35.
BIOS = "bios-256k.bin"
#: Option ROMs x86 guests need (-kernel through PVH or linuxboot, the kvmvapic
#: ROM every pc/q35 machine loads); Debian's "+ds" source tarballs strip them.
OPTION_ROMS = ("pvh.bin", "kvmvapic.bin", "linuxboot_dma.bin")
#: Where a build configured with the default prefix also looks (after -L).
DEFAULT_DATADIR = Path("/usr/local/share/qemu")
#: Module directories under a prefix, most specific first.
MODULE_DIRS = ("lib/x86_64-linux-gnu/qemu", "lib64/qemu", "lib/qemu")
#: Firmware directories under a prefix: QEMU's own, then Debian's separate SeaBIOS.
FIRMWARE_DIRS = ("share/qemu", "share/seabios")
#: Prefixes whose QEMU is configured for exactly that prefix: nothing to wire.
INSTALLED_PREFIXES = (Path("/usr"), Path("/usr/local"), Path("/"))
#: File names of QEMU modules (meson's module names: hw-display-qxl.so, ui-gtk.so, ...).
MODULE_PREFIXES = ("accel-", "audio-", "block-", "chardev-", "hw-", "ui-")


@dataclass(frozen=True)
class Layout:
    """How to run one QEMU binary so it uses its own firmware and modules."""

    kind: str                        # "installed", "prefix", "build" or "as-given"
    binary: Path                     # the real binary (resolved)
    firmware_dirs: tuple[Path, ...] = ()
    module_dir: Path | None = None

    @property
    def needs_launcher(self) -> bool:
        return bool(self.firmware_dirs or self.module_dir)

    def describe(self) -> str:
        parts = [f"{self.kind} layout"]
        if self.firmware_dirs:
            parts.append("firmware " + ", ".join(f"-L {d}" for d in self.firmware_dirs))
        if self.module_dir:
            parts.append(f"QEMU_MODULE_DIR={self.module_dir}")
        return "; ".join(parts)


def _is_module(path: Path) -> bool:
    return path.suffix == ".so" and path.name.startswith(MODULE_PREFIXES)


def _has_modules(directory: Path) -> bool:
    try:
        return any(_is_module(p) for p in directory.iterdir())
    except OSError:
        return False


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return False


def _build_dir(binary: Path) -> Path | None:
    """The meson build directory the binary sits in, if it does."""
    directory = binary.parent
    if (directory / "build.ninja").exists() or (directory / "meson-info").is_dir():
        return directory
    return None


def _source_dir(build: Path) -> Path | None:
    """The source tree of a build directory: meson records it; else the parent."""
    try:
        info = json.loads((build / "meson-info" / "meson-info.json").read_text())
        source = Path(info["directories"]["source"])
        if source.is_dir():
            return source
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return build.parent if (build.parent / "pc-bios").is_dir() else None


def _build_layout(binary: Path, build: Path) -> Layout:
    source = _source_dir(build)
    candidates = [build / "pc-bios"] + ([source / "pc-bios"] if source else [])
    firmware = next((d for d in candidates if (d / BIOS).exists()), None)
    if firmware is None:
        searched = ", ".join(str(d) for d in candidates)
        raise QemuNotFound(
            f"{binary} is a QEMU build directory's binary, but no firmware directory with "
            f"{BIOS} was found (searched {searched}); QEMU would need `-L DIR` with SeaBIOS",
            fix="run it from a complete build (its source tree's pc-bios/ holds the firmware), "
                "or pass --qemu-binary a wrapper script that runs it with -L /usr/share/seabios "
                "-L /usr/share/qemu")
    roms_in = [*candidates, DEFAULT_DATADIR]
    missing = [rom for rom in OPTION_ROMS if not any((d / rom).exists() for d in roms_in)]
    if missing:
        # Without them QEMU starts, prints "rom: file pvh.bin: error Failed to open
        # file" and the guest never boots: name them now, not after a boot deadline.
        raise QemuNotFound(
            f"{binary} is a QEMU build directory's binary whose firmware directory "
            f"{firmware} lacks the option ROMs {', '.join(missing)} (searched "
            f"{', '.join(str(d) for d in roms_in)}): QEMU loads them to boot a kernel, "
            "so every guest would hang before its kernel runs",
            fix="copy them from the same QEMU release's pc-bios/ (a full source tarball, not "
                "Debian's +ds one, which strips them; or the qemu-system-data package's "
                f"/usr/share/qemu) into {firmware}")
    return Layout("build", binary, (firmware,), build if _has_modules(build) else None)


def _prefix_layout(binary: Path) -> Layout | None:
    """A binary in <prefix>/bin or <prefix>/usr/bin next to share/qemu."""
    if binary.parent.name != "bin":
        return None
    prefix = binary.parent.parent
    if not (prefix / "share" / "qemu").is_dir():
        return None
    if prefix in INSTALLED_PREFIXES:
        return Layout("installed", binary)
    firmware = tuple(prefix / d for d in FIRMWARE_DIRS if (prefix / d).is_dir())
    module_dir = next((prefix / d for d in MODULE_DIRS if _has_modules(prefix / d)), None)
    return Layout("prefix", binary, firmware, module_dir)


def detect(binary: Path) -> Layout:
    """The layout of a resolved binary path (no QEMU is started)."""
    if _is_script(binary):
        return Layout("as-given", binary)  # a wrapper: it knows what it needs
    build = _build_dir(binary)
    if build is not None:
        return _build_layout(binary, build)
    return _prefix_layout(binary) or Layout("as-given", binary)


def launcher_text(layout: Layout, comment: str) -> str:
    lines = ["#!/bin/sh", f"# {comment}",
             "# Written by pci-harness: runs QEMU with its own firmware and modules."]
    if layout.module_dir is not None:
        lines += [f"QEMU_MODULE_DIR={shlex.quote(str(layout.module_dir))}",
                  "export QEMU_MODULE_DIR"]
    argv = [str(layout.binary)] + [a for d in layout.firmware_dirs for a in ("-L", str(d))]
    lines.append(f"exec {shlex.join(argv)} \"$@\"")
    return "\n".join(lines) + "\n"


def write_launcher(layout: Layout, path: Path, comment: str) -> Path:
    """Write (or keep, when unchanged) an executable launcher script at `path`.

    An unchanged launcher keeps its mtime, so caches keyed on it stay valid.
    """
    text = launcher_text(layout, comment)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def cached_launcher(layout: Layout) -> Path:
    """The launcher the harness keeps for a prefix or build-tree binary."""
    digest = hashlib.sha256(str(layout.binary).encode()).hexdigest()[:12]
    path = cache_root() / "qemu" / "launchers" / digest / "qemu-system-x86_64"
    return write_launcher(layout, path, f"{layout.binary} ({layout.describe()})")
