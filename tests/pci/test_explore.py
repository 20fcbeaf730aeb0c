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
        pytest.skip("the exploration budget (--explore-minutes) is spent")
    earlier = explore_runner.duplicate_of(example)
    if earlier is not None:
        pytest.skip(f"draws the same machine as example {earlier}")
    verdict = explore_runner.run(example, artifacts)
    assert not verdict.outcome.failed, verdict.message()
