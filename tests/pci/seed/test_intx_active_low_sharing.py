"""intx-active-low, its sharing half: "stress-test devices with INT#x interrupts
with interrupt sharing".

Devices with MSI-X off (vectors=0) are placed so that the PCI-to-PCI bridge
swizzle puts all of them on ONE chipset link, at bridge depths 0-3.  Routing is
checked against the swizzle model in the guest (sysfs irq) and in QEMU (the
IO-APIC pin `info irq` counts while one device alone does I/O); the load is
md5-verified disk and network I/O.  (The DSDT's polarity: test_intx_active_low.py.)
"""

from __future__ import annotations

import json

import pytest

from harness.scenarios.intx.stress import run_stress, shared_line_layout
from harness.workloads.payload import PayloadServer

SHARING_SECONDS = 6


@pytest.mark.seed("intx-active-low")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_intx_sharing_stress(machine, make_guest, artifacts):
    layout = shared_line_layout(machine, [0, 1, 2, 3])
    with PayloadServer() as server:
        guest = make_guest(layout.topology, netdevs=layout.netdevs)
        report = run_stress(guest, layout, server, SHARING_SECONDS)
    (artifacts / "intx-stress.json").write_text(json.dumps(report, indent=1))
    lines = {d["irq"] for d in report["devices"]}
    assert len(lines) == 1, f"stress devices are not on one shared line: {report['devices']}"
    assert report["ok"], ("INT#x sharing stress failed:\n  " + "\n  ".join(report["failures"])
                          + f"\nreport: {json.dumps(report)}")
