"""The seed items: the KVM "PCI" TODO page, one id per item.

Tests carry `@pytest.mark.seed("<id>")`; the plugin rejects unknown ids so a
typo cannot silently drop a test out of the conformance matrix.
"""

SEED_ITEMS: dict[str, str] = {
    "virtio-pcie-memory-bars": "virtio device as PCI Express device (memory BARs)",
    "bridge-hotplug-acpi-bsel": "Hotplug for devices behind PCI bridges",
    "q35-hotplug": "Hotplug for Q35",
    "link-speed-width": "Support for different PCI express link width/speed settings",
    "intx-active-low": "PCI interrupts should be active-low",
    "master-abort": "PCI master-abort is not emulated correctly",
    "intx-bridge-depth": "Better modeling for PCI INT#x",
    "subtractive-decode": "Subtractive decoding support",
    "vga-behind-bridge": "Support VGA behind a PCI bridge",
    "pci-connectivity": "Way to figure out proper PCI connectivity options",
    "ahci-stability": "Fix AHCI for stability (ping pong migration)",
}
