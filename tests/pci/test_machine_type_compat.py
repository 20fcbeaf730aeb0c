"""Guest-visible config space follows the *machine type's* compat rules, not the binary's.

The same 10.0 binary builds `pc-q35-7.2` with 7.2's config space and
`pc-q35-10.0` (what the pinned `q35` alias means there) with its own: DevCap
Extended Tag is set from pc-q35-9.2 on (x-pcie-ext-tag).  virtio's PMCSR
No_Soft_Reset stays clear for every type (x-pcie-pm-no-soft-reset defaults
off: measured, see facts.py).  On 7.2.22 both machines are 7.2 types.
Each case asserts this binary's own value from facts.py (machine_fact), read
from the guest's sysfs config bytes.
"""

from __future__ import annotations

import pytest

from harness.qemu.facts import DEVCAP_EXT_TAG, VIRTIO_PM_NO_SOFT_RESET, machine_fact, parse_version
from harness.topology import topology_from_dict
from harness.views.configspace import cap_offsets

PCIE_CAP, PM_CAP = 0x10, 0x01
DEVCAP_EXT_TAG_BIT = 0x20      # PCIe DevCap bit 5: Extended Tag Field Supported
PMCSR_NO_SOFT_RESET = 0x08     # PM Control/Status bit 3


@pytest.mark.parametrize("machine", ["pc-q35-7.2", "q35"])
def test_config_space_follows_the_machine_types_compat_rules(make_guest, machine: str) -> None:
    guest = make_guest(topology_from_dict({"machine": machine, "device": [
        {"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"},
        {"id": "d1", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "16M"}]}))
    pinned = guest.plan.topology.machine
    assert pinned.startswith("pc-q35-"), f"the factory pins {machine!r}, got {pinned!r}"
    qemu = parse_version(guest.plan.binary.version)
    child = guest.succeed("ls -d /sys/bus/pci/devices/0000:00:02.0/0000:??:??.?").split()
    assert len(child) == 1, child
    cfg = bytes.fromhex(guest.succeed(f"xxd -p {child[0]}/config | tr -d '\\n'").strip())
    caps = {cap: pos for pos, cap in cap_offsets(cfg)}
    assert PCIE_CAP in caps and PM_CAP in caps, f"virtio behind a port: caps {caps}"
    devcap = int.from_bytes(cfg[caps[PCIE_CAP] + 4:caps[PCIE_CAP] + 8], "little")
    pmcsr = int.from_bytes(cfg[caps[PM_CAP] + 4:caps[PM_CAP] + 6], "little")
    want_tag = machine_fact(DEVCAP_EXT_TAG, pinned, qemu)
    want_nsr = machine_fact(VIRTIO_PM_NO_SOFT_RESET, pinned, qemu)
    assert bool(devcap & DEVCAP_EXT_TAG_BIT) is want_tag, (
        f"{pinned} on QEMU {guest.plan.binary.version}: DevCap {devcap:#010x}, Extended Tag "
        f"expected {want_tag} (changed in machine type {DEVCAP_EXT_TAG.changed_in()})")
    assert bool(pmcsr & PMCSR_NO_SOFT_RESET) is want_nsr, (
        f"{pinned} on QEMU {guest.plan.binary.version}: PMCSR {pmcsr:#06x}, No_Soft_Reset "
        f"expected {want_nsr} (changed in machine type {VIRTIO_PM_NO_SOFT_RESET.changed_in()})")
