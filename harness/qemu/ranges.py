"""Version ranges for the known-gap table (harness/qemu/known.py): the QEMU versions
a gap holds for (VersionRange), and the firmware versions, since a gap between a
QEMU and a firmware release holds only where both are in range (FirmwareRange)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.qemu.facts import Version, show_version

FirmwareVersion = tuple[int, ...]


@dataclass(frozen=True)
class VersionRange:
    """introduced <= version < fixed; None leaves that end open."""

    introduced: Version | None = None
    fixed: Version | None = None

    def __contains__(self, version: Version) -> bool:
        return ((self.introduced is None or version >= self.introduced)
                and (self.fixed is None or version < self.fixed))

    def __str__(self) -> str:
        if self.introduced is None and self.fixed is None:
            return "every version"
        if self.introduced is None:
            assert self.fixed is not None
            return f"before {show_version(self.fixed)}"
        if self.fixed is None:
            return f"{show_version(self.introduced)} and later"
        return f"{show_version(self.introduced)} to before {show_version(self.fixed)}"


#: Every QEMU version.
ALWAYS = VersionRange()


def parse_firmware_version(text: str) -> FirmwareVersion | None:
    """(1, 16, 2) of "1.16.2-debian-1.16.2-1", "rel-1.16.3-0-ga6ed6b70" or "seabios 1.16.2";
    (2022, 11) of OVMF's "2022.11-6+deb12u2"; None when TEXT has no version."""
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def family_version(text: str) -> tuple[str, str | None]:
    """("seabios", "1.16.2") of a measurement's "seabios 1.16.2"."""
    family, _, version = text.partition(" ")
    return family, version or None


@dataclass(frozen=True)
class FirmwareRange:
    """The firmware a gap needs besides the QEMU version: a family ("seabios") and
    its versions, half open like VersionRange (None leaves that end open)."""

    family: str
    introduced: FirmwareVersion | None = None
    fixed: FirmwareVersion | None = None

    def holds(self, family: str, version: str | None) -> bool:
        if family != self.family:
            return False
        parsed = parse_firmware_version(version or "")
        if parsed is None:
            return False  # a build that says no version: not claimed
        return ((self.introduced is None or parsed >= self.introduced)
                and (self.fixed is None or parsed < self.fixed))

    def __str__(self) -> str:
        low = f"{show_version(self.introduced)} " if self.introduced else ""
        high = f"before {show_version(self.fixed)}" if self.fixed else "and later"
        return f"{self.family} {low}{high}".replace("  ", " ")
