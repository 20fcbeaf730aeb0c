"""Device state a migration must keep, read from inside the guest before and after.

No seed item covers it (ahci-stability is the AHCI ping-pong), so it lives
outside seed/.
"""

from collections.abc import Callable

from harness.errors import HarnessError
from harness.guest.functions import (
    GuestFunction,
    bar_address,
    config_read,
    devmem_write,
    function_of,
    read_file,
)
from harness.guest.msi import (
    MSIX_CAP,
    capability_offsets,
    interrupt_differences,
    msi_state,
    msix_state,
)
from harness.guest.running import Guest
from harness.topology import topology_from_dict

E1000E_BEHIND_BRIDGE = topology_from_dict({"machine": "q35", "device": [
    {"id": "br1", "driver": "pcie-pci-bridge"},
    {"id": "nic1", "driver": "e1000e", "bus": "br1"}]})


def _nic_with_msix(make_guest: Callable[..., Guest]) -> tuple[Guest, GuestFunction]:
    # iomem=relaxed: the MSI-X table is read through /dev/mem in a BAR e1000e claimed.
    src = make_guest(E1000E_BEHIND_BRIDGE, kernel_args=("iomem=relaxed",))
    nic = function_of(src, E1000E_BEHIND_BRIDGE, "nic1")
    src.succeed(f"ip link set {nic.net} up")  # e1000e enables MSI-X when it opens
    state = msix_state(src, nic)
    if state is None or not state.enabled:
        raise HarnessError(f"precondition: {nic.net} ({nic.bdf}) did not enable MSI-X",
                           tail=src.succeed("cat /proc/interrupts"))
    return src, nic


def test_e1000e_behind_a_pcie_pci_bridge_keeps_its_msix_across_migration(
        make_guest: Callable[..., Guest], migrate: Callable[..., Guest]) -> None:
    src, nic = _nic_with_msix(make_guest)
    before = (msix_state(src, nic), msi_state(src, nic))
    dst = migrate(src)
    after = (msix_state(dst, nic), msi_state(dst, nic))
    assert interrupt_differences(before, after) == [], f"before {before}, after {after}"


def test_a_changed_msix_entry_is_named(make_guest: Callable[..., Guest],
                                        migrate: Callable[..., Guest]) -> None:
    """The check above, fed a wrong destination: one entry's data rewritten after the hop."""
    src, nic = _nic_with_msix(make_guest)
    before = (msix_state(src, nic), msi_state(src, nic))
    dst = migrate(src)
    table = before[0]
    assert table is not None
    config = read_file(dst, f"/sys/bus/pci/devices/{nic.bdf}/config")
    cap = capability_offsets(config)[MSIX_CAP]
    bir_offset = config_read(dst, nic.bdf, cap + 4, 32)
    start, _ = bar_address(dst, nic, bir_offset & 7)
    devmem_write(dst, start + (bir_offset & ~7) + 8, table.entries[0].data ^ 0x1)
    after = (msix_state(dst, nic), msi_state(dst, nic))
    found = interrupt_differences(before, after)
    assert len(found) == 1 and found[0].startswith("MSI-X entry 0:"), found
