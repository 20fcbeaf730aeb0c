"""A QEMU binary: where it is, how it runs, its version, the machine types it knows.

`find_qemu` accepts an installed binary, one unpacked under any prefix and a
build directory's binary (harness/qemu/install.py finds their firmware and
modules); one the harness wires that way is started once with `-S` and must
answer qom-list-types before it is trusted (verdict cached on disk).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import QemuNotFound, UserError
from harness.paths import cache_root
from harness.qemu import install as qemu_install

DEFAULT_NAME = "qemu-system-x86_64"


@dataclass(frozen=True)
class QemuBinary:
    path: Path
    version: str            # "7.2.22"
    full_version: str       # first line of -version
    machines: frozenset[str]  # every name and alias from -machine help
    aliases: tuple[tuple[str, str], ...] = ()  # ("q35", "pc-q35-7.2"): what an alias means here
    # The binary the user named when `path` is a launcher that wires its
    # firmware and modules (harness/qemu/install.py); None when `path` is it.
    given: Path | None = None
    layout: str = "installed"  # installed, prefix, build or as-given

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

    @property
    def real_path(self) -> Path:
        """The QEMU executable itself (not its launcher)."""
        return self.given or self.path

    def identity(self) -> str:
        """Changes when the binary (or its launcher) is replaced: for cache keys."""
        st = self.path.stat()
        ident = f"{self.path}:{st.st_size}:{st.st_mtime_ns}:{self.version}"
        if self.given is not None:
            real = self.given.stat()
            ident += f"|{self.given}:{real.st_size}:{real.st_mtime_ns}"
        return ident


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
    """--qemu-binary, else $PCI_HARNESS_QEMU, else qemu-system-x86_64 on PATH.

    A binary unpacked under a prefix or in a build directory runs through a
    launcher with its own firmware and modules, and must start and answer
    qom-list-types first.
    """
    if explicit is not None and not str(explicit).strip():
        # `--qemu "$(pci-harness qemu-get SUITE)"` whose command failed: never fall back
        # to the default QEMU and judge the wrong binary.
        raise QemuNotFound("the QEMU path given is empty (did the command that prints it fail?)",
                           fix="run that command on its own to see its error, e.g. "
                               "`pci-harness qemu-get SUITE`")
    wanted = str(explicit) if explicit else os.environ.get("PCI_HARNESS_QEMU") or DEFAULT_NAME
    resolved = shutil.which(wanted)
    if resolved is None:
        if explicit or os.environ.get("PCI_HARNESS_QEMU"):
            raise QemuNotFound(f"QEMU binary {wanted} does not exist or is not executable",
                               fix="check the path given to --qemu-binary")
        raise QemuNotFound("no qemu-system-x86_64 on PATH",
                           fix="install it with `apt-get install qemu-system-x86` "
                               "(bin/pci-harness does this as root) or pass --qemu-binary PATH")
    return _find(str(Path(resolved).resolve()))


@functools.cache
def _find(real: str) -> QemuBinary:
    found = qemu_install.detect(Path(real))
    if found.needs_launcher:
        launcher = qemu_install.cached_launcher(found)
        binary = replace(_inspect(str(launcher)), given=Path(real), layout=found.kind)
    else:
        binary = replace(_inspect(real), layout=found.kind)
    if found.needs_launcher:  # wired by us: prove it works before any guest relies on it
        _checked_start(binary, found)
    return binary


#: How long a paused QEMU may take to start and list its types (unscaled: once per binary).
START_CHECK_S = 60.0

_QMP_CHECK = (b'{"execute": "qmp_capabilities"}\n{"execute": "qom-list-types"}\n'
              b'{"execute": "quit"}\n')


def check_starts(path: Path, what: str | None = None) -> int:
    """Start QEMU paused on q35 (firmware loads at machine creation) and list
    its QOM types (every module loads then); the number of types, or a
    QemuNotFound that says why it failed."""
    argv = [str(path), "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
            "-S", "-qmp", "stdio"]
    name = what or str(path)
    try:
        proc = subprocess.run(argv, input=_QMP_CHECK, capture_output=True,
                              timeout=START_CHECK_S, check=False)
    except subprocess.TimeoutExpired:
        raise QemuNotFound(f"{name} did not answer qom-list-types within {START_CHECK_S:.0f} s",
                           fix="run it by hand with -S -qmp stdio to see where it hangs") from None
    except OSError as exc:
        raise QemuNotFound(f"{name} cannot be started: {exc.strerror}",
                           fix="pass an executable qemu-system-x86_64 with --qemu-binary") from None
    stderr = proc.stderr.decode(errors="replace")
    for line in proc.stdout.decode(errors="replace").splitlines():
        try:
            reply = json.loads(line)
        except ValueError:
            continue
        if isinstance(reply, dict) and isinstance(reply.get("return"), list):
            return len(reply["return"])
    raise start_failure(name, proc.returncode, stderr)


def start_failure(name: str, returncode: int, stderr: str) -> QemuNotFound:
    """Why a QEMU failed to start, in words a user can act on."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else f"exit status {returncode}, no output"
    glibc = re.search(r"version `GLIBC_([\d.]+)' not found", text)
    if glibc:
        return QemuNotFound(
            f"{name} needs glibc {glibc.group(1)} or newer, and this host's C library is "
            f"older ({os.confstr('CS_GNU_LIBC_VERSION') or 'unknown'})",
            fix="use a QEMU built for this release (for Debian 12: bookworm-backports) or "
                "build QEMU from source here", tail=text[-1500:])
    library = re.search(r"error while loading shared libraries: ([^:]+)", text)
    if library:
        return QemuNotFound(
            f"{name} needs the library {library.group(1)}, which this host lacks",
            fix="install the package that provides it, or use a QEMU built for this release",
            tail=text[-1500:])
    if "Only modules from the same build" in text:
        module = re.findall(r"(/\S+\.so)", text)
        return QemuNotFound(
            f"{name} loaded a QEMU module of another build"
            + (f" ({module[-1]})" if module else "") + " and aborted: QEMU searches the "
            "system's module directory for any module missing from its own",
            fix="unpack that QEMU's module packages of the same version next to it "
                "(qemu-system-modules-opengl, qemu-system-modules-spice, qemu-block-extra, "
                "qemu-system-gui), or fetch it whole with `pci-harness qemu-get SUITE`",
            tail=text[-1500:])
    if "could not load PC BIOS" in text or "failed to find romfile" in text:
        return QemuNotFound(
            f"{name} does not find its firmware ({last})",
            fix=f"give it a firmware directory with {qemu_install.BIOS}: unpack its seabios "
                "next to it, or pass a wrapper script that runs it with -L DIR",
            tail=text[-1500:])
    return QemuNotFound(f"{name} did not start and answer qom-list-types ({last[:300]})",
                        fix="run it by hand with -S -qmp stdio to see why", tail=text[-1500:])


def _checked_start(binary: QemuBinary, found: qemu_install.Layout) -> None:
    """check_starts once per binary identity (a verdict file in the cache)."""
    key = hashlib.sha256(binary.identity().encode()).hexdigest()[:24]
    mark = cache_root() / "qemu" / "checked" / key
    if mark.exists():
        return
    check_starts(binary.path, f"QEMU {binary.real_path} ({found.describe()})")
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(binary.identity() + "\n")


#: QEMU's words for a firmware file it could not open and went on without
#: (7.2: "Could not open option rom 'pvh.bin': No such file or directory";
#: 10.0.2: "rom: file pvh.bin             : error Failed to open file “pvh.bin”: No
#: such file or directory", padded): the machine runs, the
#: guest never boots, and the serial console stays silent.
_MISSING_FIRMWARE = re.compile(
    r"Could not open option rom '(?P<a>[^']+)'"
    r"|rom: file (?P<b>[^\s:]+)\s*:? error Failed to open file"
    r"|failed to find romfile \"(?P<c>[^\"]+)\"")


def missing_firmware(stderr: str) -> list[str]:
    """The firmware files QEMU's stderr says it could not open, in order, once each."""
    found: list[str] = []
    for match in _MISSING_FIRMWARE.finditer(stderr):
        name = next(g for g in match.groups() if g)
        if name not in found:
            found.append(name)
    return found


def firmware_missing_error(binary: QemuBinary, files: list[str], stderr: str) -> QemuNotFound:
    """A guest that cannot boot because QEMU lacks firmware: the files, QEMU's own
    lines, and the `-L` directory that would fix it for this kind of QEMU."""
    lines = [line for line in stderr.splitlines() if any(f in line for f in files)]
    try:
        dirs = qemu_install.detect(binary.real_path).firmware_dirs
    except UserError:
        dirs = ()
    given = (" (it runs with " + ", ".join(f"-L {d}" for d in dirs) + ")") if dirs else ""
    if binary.layout == "build":
        fix = (f"a build tree needs its option ROMs: give QEMU -L DIR with a directory holding "
               f"{', '.join(files)} -- the build's pc-bios/ once `make` built pc-bios/optionrom, "
               "or the source tree's pc-bios/ -- through a wrapper script passed as "
               "--qemu-binary")
    elif binary.layout == "prefix":
        fix = ("unpack the data package of the same QEMU version (Debian: qemu-system-data) "
               "under the prefix, or fetch it whole with `pci-harness qemu-get SUITE`")
    else:
        fix = ("install QEMU's data files (Debian: qemu-system-data), or pass a wrapper script "
               f"that runs it with -L DIR, DIR holding {', '.join(files)}")
    return QemuNotFound(
        f"QEMU {binary.real_path}{given} could not open the firmware file(s) "
        f"{', '.join(files)}, so the guest cannot boot; QEMU said: {' / '.join(lines)}",
        fix=fix, tail=stderr[-1500:])
