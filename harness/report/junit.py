"""One junit.xml for CI from pytest's per-run files.

pytest writes one junit.xml per run (one QEMU binary); CI systems want one
file.  Each run's <testsuite> is kept as is and renamed after the run, so a
test that ran against two QEMU versions appears once per version.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

_COUNTERS = ("tests", "failures", "errors", "skipped")


def merge_junit(parts: Sequence[tuple[str, Path]], target: Path) -> None:
    """Write `target` with the testsuites of every (label, junit.xml) part."""
    root = ET.Element("testsuites", name="pci-harness nightly")
    totals = dict.fromkeys(_COUNTERS, 0)
    elapsed = 0.0
    for label, path in parts:
        if not path.is_file():
            continue
        tree = ET.parse(path)
        top = tree.getroot()
        suites = [top] if top.tag == "testsuite" else list(top.iter("testsuite"))
        for suite in suites:
            suite.set("name", f"pci-harness qemu {label}")
            for key in _COUNTERS:
                totals[key] += int(suite.get(key, "0") or 0)
            elapsed += float(suite.get("time", "0") or 0)
            root.append(suite)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{elapsed:.3f}")
    ET.indent(root)
    ET.ElementTree(root).write(target, encoding="utf-8", xml_declaration=True)
