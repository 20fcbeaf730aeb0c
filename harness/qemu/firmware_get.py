"""`pci-harness firmware-get SUITE seabios|ovmf`: a firmware build from another suite
of the Debian archive, unpacked into the cache, printed as a `--firmware` value.

The same plumbing as `qemu-get` (harness/qemu/get.py: a private apt state, never
the system's lists or status; `apt-get download` + `dpkg-deb -x`), for one
architecture-independent package: `seabios` (bios-256k.bin, handed to QEMU as
`-bios`) or `ovmf` (OVMF_CODE_4M.fd with its OVMF_VARS_4M.fd template, as
`ovmf:CODE,VARS`).  Firmware packages are `Architecture: all` and link nothing,
so a newer suite's build runs with any QEMU on this host.  A `firmware.json`
next to the unpacked tree names the package version (harness/qemu/firmware.py
reads it when the image itself carries none).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from harness.errors import UserError
from harness.paths import cache_root
from harness.progress import Progress
from harness.qemu.firmware import MARKER, image_version
from harness.qemu.get import Fetched, Fetcher, host_arch, newest

#: package -> (files under the unpacked root: the image [, the variable store template]).
PACKAGES: dict[str, tuple[str, ...]] = {
    "seabios": ("usr/share/seabios/bios-256k.bin",),
    "ovmf": ("usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"),
}


def firmware_spec(package: str, files: tuple[Path, ...]) -> str:
    """The --firmware value for the unpacked files."""
    if package == "ovmf":
        return "ovmf:" + ",".join(str(f) for f in files)
    return str(files[0])


class FirmwareFetcher(Fetcher):
    """One suite's firmware package in the cache: <cache>/firmware/get/<suite>/<package>/."""

    def __init__(self, suite: str, package: str, progress: Progress, base: Path | None = None):
        if package not in PACKAGES:
            raise UserError(f"{package!r} is not a firmware package firmware-get knows",
                            fix=f"name one of {', '.join(PACKAGES)}")
        super().__init__(suite, progress,
                         base or cache_root() / "firmware" / "get" / suite / package)
        self.package = package

    def cached(self) -> Fetched | None:
        try:
            fetched = Fetched(**json.loads(self.marker.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        paths = fetched.path.removeprefix("ovmf:").split(",")
        return fetched if all(Path(p).is_file() for p in paths) else None

    def _fetch(self) -> Fetched:
        self._update()
        pick = newest(self._show([self.package]), self.package, host_arch())
        if pick is None:
            raise UserError(f"the suite {self.suite} has no {self.package} package",
                            fix="pick a suite that ships it, such as bookworm, "
                                "bookworm-backports, trixie or sid")
        target = self.base / re.sub(r"[^A-Za-z0-9.+~_-]", "_", pick.version)
        files = tuple(target / "root" / f for f in PACKAGES[self.package])
        if not all(f.is_file() for f in files):
            self._download_and_unpack([pick], target)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{self.package} {pick.version} from {self.suite} has no "
                            f"{', '.join(missing)}",
                            fix="pick another suite, or give the image's path to --firmware")
        (target / MARKER).write_text(json.dumps(
            {"package": self.package, "package_version": pick.version, "suite": self.suite},
            indent=1) + "\n")
        version = image_version(files[0]) or pick.version
        fetched = Fetched(firmware_spec(self.package, files), version, pick.version, self.suite)
        self.progress(f"{self.package} {version} unpacked under {target}")
        self.marker.write_text(json.dumps(asdict(fetched), indent=1) + "\n")
        return fetched
