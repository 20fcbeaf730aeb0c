"""The three views of one machine, end to end: what the model, QEMU and the guest say.

- pciview.py      the PciView shape all three views share (model, QEMU, guest)
- configspace.py  config-space bytes -> capabilities, link, windows
- qemu.py         the QEMU view: query-pci + QOM hotplug handlers (collect, parse)
- guest.py        the guest view: GUEST_DUMP_SCRIPT over SSH, parsed from raw sysfs
- compare.py      three-way diff (model/QEMU/guest) and before/after diff

The model view itself is derived from the topology (harness.topology.expect).
Collecting all three of a running guest is harness.scenarios.threeview
(`collect_views(guest)`): this package never holds a guest.
"""

from __future__ import annotations

from harness.views.compare import Change, Difference, compare, diff_views, format_value
from harness.views.guest import (
    GUEST_DUMP_SCRIPT,
    GUEST_LSPCI_SCRIPT,
    GuestDumpError,
    parse_guest_view,
    sysfs_path,
)
from harness.views.pciview import Bar, PciFunction, PciView
from harness.views.qemu import (
    QomBus,
    collect_qemu_view,
    config_view,
    hotplug_mechanism,
    parse_qemu_view,
    qom_hotplug_info,
    qom_pci_buses,
)

__all__ = [
    "GUEST_DUMP_SCRIPT", "GUEST_LSPCI_SCRIPT", "Bar", "Change", "Difference", "GuestDumpError",
    "PciFunction", "PciView", "QomBus", "collect_qemu_view", "compare", "config_view",
    "diff_views", "format_value", "hotplug_mechanism", "parse_guest_view",
    "parse_qemu_view", "qom_hotplug_info", "qom_pci_buses", "sysfs_path",
]
