"""A test that uses a guest a module-scoped fixture booted for an earlier test is
filed under that guest's machine (note_machine), whichever test ran first.
Before, such tests had no machine (column "any") when another test of their
module booted the guest, so two nights filed 8 tests in different columns."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
import pytest

from harness.report.collect import note_machine

BOOTS = []


@pytest.fixture(scope="module")
def module_guest():
    BOOTS.append(1)          # stands for a guest booted once per module
    return "q35"


@pytest.fixture
def guest(module_guest):
    if NOTE:
        note_machine(module_guest)
    return module_guest


def test_first(guest):
    assert BOOTS == [1]


def test_second(guest):
    assert BOOTS == [1]      # the same guest: nothing planned by this test
'''


@pytest.mark.parametrize("note, want", [(True, "q35"), (False, None)])
def test_every_test_of_a_shared_guest_gets_its_machine(pytester: pytest.Pytester, note: bool,
                                                      want: str | None) -> None:
    pytester.makepyfile(test_shared=f"NOTE = {note}\n" + TESTS)
    out = pytester.path / "results.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "harness.report.collect",
                                         f"--report-results={out}")
    result.assert_outcomes(passed=2)
    tests = json.loads(out.read_text())["tests"]
    kinds = {t["nodeid"].split("::")[-1]: t["machine_kind"] for t in tests}
    assert kinds == {"test_first": want, "test_second": want}, kinds
