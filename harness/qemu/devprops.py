"""Which -device properties a driver has on this QEMU binary.

The exploration draws a property only where the binary lists it: 7.2.22 and
10.0.2 differ (7.2 ports have x-native-hotplug, 10.0 ones do not; x-speed and
x-width exist on pcie-root-port only, not on ioh3420 or xio3130-downstream), so
a table of names would be wrong for one of them.  `-device DRIVER,help`
answers without starting a machine; answers are kept per binary identity.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterable

from harness.qemu.binary import QemuBinary

_PROP = re.compile(r"^\s+([A-Za-z0-9_.-]+)=<", re.MULTILINE)


def _list(path: str, driver: str) -> frozenset[str] | None:
    proc = subprocess.run([path, "-nodefaults", "-machine", "none", "-device", f"{driver},help"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          check=False)
    if proc.returncode != 0:
        return None  # this binary has no such driver
    return frozenset(_PROP.findall(proc.stdout))


@functools.lru_cache(maxsize=8)
def _cached(identity: str, path: str, drivers: tuple[str, ...]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for driver in drivers:
        names = _list(path, driver)
        if names is not None:
            out[driver] = names
    return out


def device_properties(binary: QemuBinary, drivers: Iterable[str]) -> dict[str, frozenset[str]]:
    """driver -> property names, for the DRIVERS this binary has (others left out)."""
    return dict(_cached(binary.identity(), str(binary.path), tuple(sorted(drivers))))
