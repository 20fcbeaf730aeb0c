"""Shipped in the wheel as `harness.suite.tests` (only tests/pci, the conformance
suite `pci-harness nightly` runs); this file lets an editable install import it
the same way.  pytest collects tests/unit and tests/pci as before: neither has
an __init__.py of its own."""
