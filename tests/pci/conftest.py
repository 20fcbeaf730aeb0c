"""Every test in tests/pci starts real QEMU."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/pci/" in item.nodeid:
            item.add_marker(pytest.mark.qemu)
