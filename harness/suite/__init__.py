"""The conformance suite as the wheel ships it (`pci-harness nightly` runs it).

In a wheel this package holds `tests/pci/` (from the repository's `tests/`),
`topologies/` and `pytest.ini`, laid out as in the repository so test ids and
relative lookups (`tests/pci/x.py` -> `../../topologies`) are the same.  In
an editable install the suite is the checkout itself; `harness.paths.suite_root`
finds either.  Nothing here is imported by the harness at run time.
"""
