"""Machines nobody wrote: one drawn machine per test (harness/scenarios/explore).

`--explore-seed S --explore-examples N` draw examples 0..N-1 of seed S; xdist
spreads them over workers and no two boot the same machine.  A failing
example is shrunk to a minimal machine, saved as a case in the test's
artifacts (`found/`) with its replay command; `pci-harness explore --adopt`
turns it into a regression case under tests/pci/explored/.  With
`--explore-minutes M` (the nightly) examples that start after M minutes skip.
The default handful runs in the smoke set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report.results import BUDGET_SPENT
from harness.scenarios.explore.session import ExampleRunner, budget_left

pytestmark = pytest.mark.smoke


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example" in metafunc.fixturenames:
        count = metafunc.config.getoption("--explore-examples")
        metafunc.parametrize("example", range(count), ids=lambda i: f"example{i}")


@pytest.fixture(scope="session")
def explore_runner(harness_factory, pytestconfig: pytest.Config) -> ExampleRunner:
    return ExampleRunner(harness_factory, pytestconfig.getoption("--explore-seed"))


def test_drawn_machine_agrees(example: int, explore_runner: ExampleRunner, artifacts: Path,
                              pytestconfig: pytest.Config) -> None:
    stamp = artifacts.parent / f"explore-budget-{explore_runner.seed}"
    if not budget_left(stamp, pytestconfig.getoption("--explore-minutes")):
        pytest.skip(f"{BUDGET_SPENT}: the exploration budget (--explore-minutes) ran out")
    earlier = explore_runner.duplicate_of(example)
    if earlier is not None:
        pytest.skip(f"draws the same machine as example {earlier}")
    verdict = explore_runner.run(example, artifacts)
    assert not verdict.outcome.failed, verdict.message()


def test_placement_problems_carry_qemus_own_answer(explore_runner: ExampleRunner,
                                                   artifacts: Path) -> None:
    """A placement the model refuses is put to QEMU (paused, no guest): below a
    root port slot 3 is accepted by QEMU against the spec; slot 0x1f of q35's
    root bus (the LPC's) is refused."""
    from harness.scenarios.explore.check import MachineCheck
    from harness.topology import topology_from_dict

    check = MachineCheck(explore_runner.factory, artifacts)
    topo = topology_from_dict({"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port"}]})
    lenient = check._qemu_side(topo, {"device": "e1000e@rp1:0x3", "text": "t"})
    assert lenient["qemu"] == "accepted", lenient
    taken = check._qemu_side(topo, {"device": "e1000e@pcie.0:0x1f", "text": "t"})
    assert taken["qemu"].startswith("refused: "), taken
