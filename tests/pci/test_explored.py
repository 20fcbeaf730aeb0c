"""Found cases kept as regression tests: every tests/pci/explored/*.toml.

Each is a minimal machine `pci-harness explore` found and `explore --adopt`
copied here, with the outcome expected per QEMU release series: "passes" (the
model was fixed, or QEMU was) or "fails" (a known gap: the same difference
must still show, so a fix turns this red and the expectation is moved).  A
case without an expectation for the QEMU under test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.scenarios.explore.case import load_case
from harness.scenarios.explore.check import MachineCheck, same_failure
from harness.scenarios.explore.session import explore_factory

CASES = sorted((Path(__file__).parent / "explored").glob("*.toml"))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_explored_case(path: Path, harness_factory, artifacts: Path) -> None:
    case = load_case(path)
    expected = case.expected(harness_factory.binary.version)
    if expected is None:
        pytest.skip(f"{path.name} states no outcome for QEMU {harness_factory.binary.version}")
    outcome = MachineCheck(explore_factory(harness_factory), artifacts)(case.topology)
    if expected == "passes":
        assert not outcome.failed, (f"{path.name} was expected to pass: "
                                    + "; ".join(str(p.get("text")) for p in outcome.problems)
                                    + outcome.message)
    else:
        assert same_failure(case.signature, outcome), (
            f"{path.name} was expected to fail with {sorted(case.signature)} (a known gap); "
            f"it now says {outcome.summary()}: if QEMU fixed it, adopt it again with "
            "--expect passes")
