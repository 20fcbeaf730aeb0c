"""intx-bridge-depth ("Better modeling for PCI INT#x"): routing and rates by bridge depth.

Devices with MSI-X off (vectors=0) are placed so that the PCI-to-PCI bridge
swizzle puts all of them on ONE chipset link, at bridge depths 0-4.  Routing
is checked against the swizzle model in the guest (sysfs irq) and in QEMU (the
IO-APIC pin `info irq` counts while one device alone does I/O); the load is
md5-verified disk and network I/O, run per depth for the rates.
"""

from __future__ import annotations

import json

import pytest

from harness.report.figures import record_figure
from harness.scenarios.intx.stress import IntxStress, shared_line_layout
from harness.workloads.payload import PayloadServer

DEPTH_SECONDS = 3


@pytest.mark.seed("intx-bridge-depth")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_intx_bridge_depth_routing_and_rates(machine, make_guest, artifacts, request):
    depths = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]       # a disk and a NIC at every depth
    layout = shared_line_layout(machine, depths)
    failures: list[str] = []
    rates: dict[int, dict[str, float]] = {}
    with PayloadServer() as server:
        guest = make_guest(layout.topology, netdevs=layout.netdevs)
        stress = IntxStress(guest, layout, server)
        failures += stress.discover()
        routing = {}
        for dev in layout.devices:
            probe = stress.probe(dev.id)
            failures += stress.check_probe(probe)
            route = stress.routes[dev.id]
            routing[dev.id] = {"depth": dev.depth, "pins": route.pins, "link": route.link_name,
                               "expected_irq": stress.expected[dev.id],
                               "guest_irq": stress.fns[dev.id].irq,
                               "qemu_pins": probe.qemu_pins}
        for depth in sorted(set(depths)):
            ids = [d.id for d in layout.devices if d.depth == depth]
            result = stress.load(DEPTH_SECONDS, only=ids)
            failures += [f"depth {depth}: {f}" for f in result.failures]
            rates[depth] = {"interrupts_per_s": round(result.interrupts_per_s, 1),
                            "io_per_s": round(result.io_per_s, 1)}
        failures += stress.trouble()
    base = rates[0]
    for depth, r in rates.items():
        r["interrupt_ratio"] = round(r["interrupts_per_s"] / base["interrupts_per_s"], 3) \
            if base["interrupts_per_s"] else 0.0
        r["io_ratio"] = round(r["io_per_s"] / base["io_per_s"], 3) if base["io_per_s"] else 0.0
    request.node.user_properties.append(("intx_depth_rates", json.dumps(rates)))
    for depth, r in rates.items():
        record_figure(request, f"intx_interrupts_per_s:{machine}:depth{depth}",
                      r["interrupts_per_s"])
    (artifacts / "intx-depth.json").write_text(json.dumps(
        {"rates": rates, "routing": routing}, indent=1, default=str))
    assert not failures, ("INT#x routing/load by depth failed:\n  " + "\n  ".join(failures)
                          + f"\nrouting: {routing}\nrates: {rates}")
