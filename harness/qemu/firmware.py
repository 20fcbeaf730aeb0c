"""The firmware a guest boots with: `--firmware NAME|FILE|ovmf:FILE[,VARS]`, resolved
against the QEMU under test, with its own version.

- a name picks the firmware that comes with that QEMU: `seabios` (QEMU's default
  `bios-256k.bin`, no -bios), `qboot` (`qboot.rom`), `ovmf` (the UEFI code image and
  variable store template QEMU's firmware descriptors name, or a build tree's
  `edk2-x86_64-code.fd`; Debian's are in the `ovmf` package);
- a path is a BIOS image passed as `-bios` (a SeaBIOS of another release, say);
- `ovmf:CODE[,VARS]` is a given OVMF code image (VARS: its variable store
  template, found next to CODE when not given).

OVMF runs from two pflash units: the code read-only, and a copy of the variable
store per guest (the template is never written).  The version is read from the
image (SeaBIOS carries it as a string), else from the Debian package that owns
the file, else from `firmware.json` that `pci-harness firmware-get` writes next to
what it unpacks; the boot's own log can confirm it (`version_in_log`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import QemuNotFound, UserError
from harness.qemu import install as qemu_install

NAMES = ("seabios", "qboot", "ovmf")
SEABIOS_IMAGE = qemu_install.BIOS
QBOOT_IMAGE = "qboot.rom"
#: QEMU's own names for its bundled EDK2 build (build trees, upstream installs).
EDK2_CODE, EDK2_VARS = "edk2-x86_64-code.fd", "edk2-i386-vars.fd"
#: Where QEMU's firmware descriptors live (docs/interop/firmware.json), system-wide.
DESCRIPTOR_DIRS = (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"))
#: The last resort for `ovmf`: Debian's package, without a descriptor.
DEBIAN_OVMF = (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))
#: The marker `firmware-get` writes at the top of what it unpacked.
MARKER = "firmware.json"

_SEABIOS_VERSION = re.compile(rb"\x00((?:rel-)?1\.\d+\.\d+(?:[-.~+][\x21-\x7e]*)?)\x00")
_LOG_VERSION = re.compile(r"SeaBIOS \(version ([^)\s]+)\)")


@dataclass(frozen=True)
class Firmware:
    """One resolved firmware: what QEMU is given and what it is."""

    spec: str                     # as given: "seabios", "/x/bios.bin", "ovmf:/x/CODE.fd"
    kind: str                     # "seabios", "qboot", "ovmf" or "bios" (another BIOS image)
    image: Path | None            # the file QEMU loads (None: not found, QEMU finds its own)
    bios: str | None = None       # the -bios value (None: QEMU's default)
    vars_template: Path | None = None   # OVMF's variable store template
    version: str | None = None    # "1.16.2-debian-1.16.2-1", "2022.11-6+deb12u2"

    @property
    def uefi(self) -> bool:
        return self.kind == "ovmf"

    @property
    def family(self) -> str:
        """What a known gap keys on: "seabios" for any SeaBIOS build."""
        return self.kind

    def label(self) -> str:
        """"SeaBIOS 1.16.2-debian-1.16.2-1", "OVMF 2022.11-6+deb12u2"."""
        name = {"seabios": "SeaBIOS", "qboot": "qboot", "ovmf": "OVMF"}.get(self.kind, "BIOS")
        return f"{name} {self.version or '(version unknown)'}"

    def qemu_args(self, vars_copy: Path | None) -> list[str]:
        """-bios or the two pflash drives (the guest's own copy of the variables)."""
        if self.uefi:
            assert self.image is not None and vars_copy is not None
            return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_escape(self.image)}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={_escape(vars_copy)}"]
        return ["-bios", self.bios] if self.bios else []

    def identity(self) -> str:
        """Changes when the firmware file changes: for snapshot keys."""
        if self.image is None:
            return self.spec
        st = self.image.stat()
        return f"{self.spec}|{self.image}:{st.st_size}:{st.st_mtime_ns}"

    def as_dict(self) -> dict[str, str | None]:
        return {"spec": self.spec, "kind": self.kind, "version": self.version,
                "image": str(self.image) if self.image else None,
                "vars_template": str(self.vars_template) if self.vars_template else None}


def _escape(path: Path) -> str:
    return str(path).replace(",", ",,")


# ---- versions ----

def seabios_version(data: bytes) -> str | None:
    """The version string a SeaBIOS image carries ("1.16.2-debian-1.16.2-1",
    "rel-1.16.3-0-ga6ed6b70"), None when there is none."""
    if b"SeaBIOS" not in data:
        return None
    match = _SEABIOS_VERSION.search(data)
    return match.group(1).decode() if match else None


def version_in_log(text: str) -> str | None:
    """The version SeaBIOS printed at the top of its debug log."""
    match = _LOG_VERSION.search(text)
    return match.group(1) if match else None


def _marker_version(image: Path) -> str | None:
    for parent in list(image.parents)[:8]:
        marker = parent / MARKER
        if marker.is_file():
            try:
                return str(json.loads(marker.read_text())["package_version"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def _package_version(image: Path) -> str | None:
    """The version of the Debian package that owns IMAGE (dpkg's database)."""
    try:
        owner = subprocess.run(["dpkg-query", "-S", str(image)], capture_output=True,
                               text=True, timeout=30, check=False)
        if owner.returncode != 0 or ":" not in owner.stdout:
            return None
        package = owner.stdout.split(":", 1)[0].split(",")[0].strip()
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                                 capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return version.stdout.strip() or None


@functools.cache
def image_version(image: Path) -> str | None:
    try:
        data = image.read_bytes()
    except OSError:
        return None
    return (seabios_version(data) or _marker_version(image) or _package_version(image)
            or _package_version(image.resolve()))


# ---- resolving a spec ----

def firmware_dirs(binary_path: Path, given: Path | None) -> list[Path]:
    """Where the QEMU at BINARY_PATH finds its firmware: a launcher's -L
    directories (prefix or build layouts), else its own prefix's share/qemu."""
    dirs: list[Path] = list(launcher_dirs(binary_path))
    if given is not None:
        try:
            dirs += list(qemu_install.detect(given).firmware_dirs)
        except QemuNotFound:
            pass  # a build tree without firmware: QEMU itself says so at start-up
    real = (given or binary_path).resolve()
    # Debian's QEMU searches share/qemu, then share/seabios (--firmwarepath).
    dirs += [real.parent.parent / "share" / d for d in ("qemu", "seabios")]
    dirs += [Path("/usr/share/qemu"), Path("/usr/share/seabios")]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def launcher_dirs(path: Path) -> list[Path]:
    """The `-L DIR` arguments of a launcher script (qemu-get's, the harness's own, or a
    user's wrapper written the same way); [] for a binary."""
    try:
        with path.open("rb") as handle:
            if handle.read(2) != b"#!":
                return []
        text = path.read_text(errors="replace")
    except OSError:
        return []
    dirs = []
    for line in text.splitlines():
        if not line.lstrip().startswith("exec "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        dirs += [Path(b) for a, b in itertools.pairwise(words) if a == "-L"]
    return dirs


def _find(dirs: list[Path], name: str) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def _descriptor_ovmf(dirs: list[Path]) -> tuple[Path, Path] | None:
    """The plain (no Secure Boot, no SMM) x86_64 UEFI flash build QEMU's firmware
    descriptors name: the QEMU's own (share/qemu/firmware), then the system's."""
    for directory in [d / "firmware" for d in dirs] + list(DESCRIPTOR_DIRS):
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                desc = json.loads(path.read_text())
                mapping = desc["mapping"]
                features = set(desc.get("features", ()))
                targets = {t["architecture"] for t in desc.get("targets", ())}
                if ("uefi" not in desc.get("interface-types", ()) or mapping.get("device") != "flash"
                        or "x86_64" not in targets
                        or features & {"secure-boot", "enrolled-keys", "requires-smm"}):
                    continue
                code = Path(mapping["executable"]["filename"])
                varstore = Path(mapping["nvram-template"]["filename"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if code.is_file() and varstore.is_file():
                return code, varstore
    return None


def _vars_next_to(code: Path) -> Path | None:
    for old, new in (("CODE", "VARS"), ("code", "vars"), ("x86_64-code", "i386-vars")):
        if old in code.name:
            candidate = code.with_name(code.name.replace(old, new))
            if candidate.is_file():
                return candidate
    return None


def _no_such(spec: str, what: str, fix: str) -> UserError:
    return UserError(f"--firmware {spec}: {what}", fix=fix)


@functools.cache
def resolve_firmware(spec: str, binary_path: Path, given: Path | None = None) -> Firmware:
    """SPEC resolved for the QEMU at BINARY_PATH (its launcher's real binary GIVEN)."""
    spec = spec.strip()
    dirs = firmware_dirs(binary_path, given)
    if spec == "seabios":
        image = _find(dirs, SEABIOS_IMAGE)
        return Firmware(spec, "seabios", image, None, None,
                        image_version(image) if image else None)
    if spec == "qboot":
        image = _find(dirs, QBOOT_IMAGE)
        return Firmware(spec, "qboot", image, QBOOT_IMAGE, None, None)
    if spec == "ovmf" or spec.startswith("ovmf:"):
        return _resolve_ovmf(spec, dirs)
    path = Path(spec).expanduser()
    if "/" not in spec and not path.exists():
        raise _no_such(spec, f"{spec!r} is neither a firmware name nor a file",
                       f"name one of {', '.join(NAMES)}, give the path of a BIOS image "
                       "(passed as -bios), or ovmf:CODE.fd for a UEFI code image")
    if not path.is_file():
        raise _no_such(spec, f"{path} does not exist or is not a file",
                       "give the path of a BIOS image such as /usr/share/seabios/bios-256k.bin "
                       "(`pci-harness firmware-get SUITE seabios` fetches another release)")
    path = path.resolve()
    data = path.read_bytes()
    kind = "seabios" if b"SeaBIOS" in data else "bios"
    return Firmware(spec, kind, path, str(path), None, image_version(path))


def _resolve_ovmf(spec: str, dirs: list[Path]) -> Firmware:
    if spec == "ovmf":
        code = _find(dirs, EDK2_CODE)
        varstore = _find(dirs, EDK2_VARS) if code else None
        found = (code, varstore) if code and varstore else _descriptor_ovmf(dirs)
        if found is None and all(p.is_file() for p in DEBIAN_OVMF):
            found = DEBIAN_OVMF
        if found is None:
            raise _no_such(spec, "this QEMU comes with no OVMF (no edk2-x86_64-code.fd in its "
                           "firmware directories, no UEFI firmware descriptor, no "
                           "/usr/share/OVMF)",
                           "install Debian's ovmf package (apt-get install ovmf), fetch one "
                           "with `pci-harness firmware-get SUITE ovmf`, or give "
                           "ovmf:CODE.fd")
        code, varstore = found
    else:
        given, _, vars_given = spec.removeprefix("ovmf:").partition(",")
        code = Path(given).expanduser()
        if not code.is_file():
            raise _no_such(spec, f"the OVMF code image {code} does not exist",
                           "give ovmf:/path/OVMF_CODE_4M.fd (Debian's ovmf package)")
        found_vars = Path(vars_given).expanduser() if vars_given else _vars_next_to(code)
        if found_vars is None or not found_vars.is_file():
            raise _no_such(spec, f"no variable store template for {code} "
                           f"({found_vars or 'none next to it'})",
                           "give it after a comma: ovmf:CODE.fd,VARS.fd")
        code, varstore = code.resolve(), found_vars.resolve()
    return Firmware(spec, "ovmf", code, None, varstore, image_version(code))


def spec_files(spec: str) -> list[Path]:
    """The files a spec names itself (none for a name)."""
    if spec in NAMES:
        return []
    return [Path(p).expanduser() for p in spec.removeprefix("ovmf:").split(",") if p]


def parse_specs(values: list[str] | None) -> list[str]:
    """The nightly's repeatable --firmware (empty: the QEMU's own SeaBIOS)."""
    specs = [v.strip() for v in values or [] if v.strip()]
    if len(set(specs)) != len(specs):
        raise UserError("the same --firmware is given twice", fix="give each firmware once")
    return specs or ["seabios"]
