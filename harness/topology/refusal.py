"""QEMU refused a rendered command line: which topology device did it mean?

QEMU names the option it refuses ("qemu-system-x86_64: -device
e1000,id=nic1,...: why"); the device ids in it are the topology's own (render
writes them), so the refusal can be handed back to the user in the topology's
words.  The factory applies this to every launch, so the CLI verbs and the
pytest fixtures (`make_guest`) report a refused device the same way.
"""

from __future__ import annotations

import re

from harness.errors import HarnessError, QemuExited, QemuRefused
from harness.topology.data import Topology

_REFUSED_DEVICE = re.compile(r"-device\s+([^\s,]+)[^:]*?\bid=([^,:\s]+)[^:]*:\s*(.+)")


def attribute_refusal(topology: Topology, exc: QemuExited) -> HarnessError:
    """QEMU exited at start-up: say which topology device its message names.

    Returns a QemuRefused (a UserError: the topology asked for something QEMU
    will not build) naming the device, or `exc` itself when stderr names none.
    """
    for line in exc.stderr.splitlines():
        m = _REFUSED_DEVICE.search(line)
        if not m:
            continue
        driver, dev_id, why = m.groups()
        known = {d.id for d in topology.devices}
        name = dev_id.split(".")[0]  # "disk1.hd" is the disk of device "disk1"
        if name not in known:
            continue
        where_text = topology.describe(topology.device(name))
        return QemuRefused(f"QEMU refused {where_text} ({driver}): {why.strip()}",
                           fix="change that device's driver, bus, addr or properties; "
                               "`pci-harness where DRIVER --topology FILE` lists the buses "
                               "where a driver can go", tail=exc.stderr[-2000:])
    return exc
