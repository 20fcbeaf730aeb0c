"""pci-harness: real QEMU guests for PCI integration tests."""
