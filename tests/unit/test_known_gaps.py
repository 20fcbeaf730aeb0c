"""The known-gap table (harness/qemu/known.py): version ranges, machine types, its
evidence, and the tests it names (no QEMU)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.pytestplugin.seed_index import SEED_ITEMS
from harness.qemu.evidence import evidence_problems
from harness.qemu.facts import parse_version
from harness.qemu.known import (
    FAILS,
    KNOWN_GAPS,
    PASSES,
    KnownGap,
    Measurement,
    VersionRange,
)

TESTS = Path(__file__).resolve().parents[1] / "pci"  # the checkout's suite


SINCE_7_2 = VersionRange((7, 2))
FAILS_ON_7_2 = (Measurement("7.2.22", FAILS, ("q35",)),)


def gap(versions=SINCE_7_2, evidence=FAILS_ON_7_2, **fields):
    return KnownGap(id="g", seed="master-abort", does_instead="reads return 0", spec="all-ones",
                    versions=versions, tests=("test_x",), evidence=evidence, **fields)


@pytest.mark.parametrize("version, inside", [
    ("7.1.99", False), ("7.2.0", True), ("7.2.22", True), ("9.2.4", True), ("9.99", True),
    ("10.0.0", False), ("10.0.2", False), ("11.1", False)])
def test_range_includes_introduced_and_excludes_fixed(version, inside):
    assert (parse_version(version) in VersionRange((7, 2), fixed=(10, 0))) is inside


@pytest.mark.parametrize("versions, words", [
    (VersionRange(), "every version"), (VersionRange(fixed=(10, 0)), "before 10.0"),
    (VersionRange((7, 2)), "7.2 and later"),
    (VersionRange((7, 2), fixed=(10, 0)), "7.2 to before 10.0")])
def test_range_in_words(versions, words):
    assert str(versions) == words


def test_open_upper_end_holds_on_newer_qemu():
    assert gap().holds((11, 1)) and not gap().holds((6, 2))


def test_machine_kinds_limit_a_gap():
    pc_only = gap(machines=frozenset({"pc"}))
    assert pc_only.holds((7, 2), "pc-i440fx-7.2")
    assert not pc_only.holds((7, 2), "pc-q35-7.2")
    assert not pc_only.holds((7, 1), "pc-i440fx-7.1"), "outside the QEMU range"
    with pytest.raises(UserError, match="depends on the machine type"):
        pc_only.holds((7, 2), None)


def test_compat_property_gap_holds_for_old_machine_types_only():
    compat = gap(compat_property="x-pcie-err-unc-mask", machine_types=VersionRange(fixed=(8, 0)),
                 machines=frozenset({"q35"}))
    assert compat.holds((10, 0), "pc-q35-7.2")
    assert not compat.holds((10, 0), "pc-q35-8.0")
    assert not compat.holds((10, 0), "pc-q35-10.0")
    assert not compat.holds((10, 0), "pc-i440fx-7.2"), "q35 only"
    with pytest.raises(UserError, match="is an alias"):
        compat.holds((10, 0), "q35")
    assert compat.scope() == "QEMU 7.2 and later, q35, machine types before 8.0 " \
                             "(x-pcie-err-unc-mask)"


def test_reason_starts_with_the_seed_item():
    assert gap().reason == "master-abort: reads return 0"


def test_ahci_bus_master_gap_is_scoped_before_10_0():
    ahci = next(g for g in KNOWN_GAPS if g.id == "ahci-bus-master-cleared-migration")
    assert (ahci.holds((7, 2)), ahci.holds((10, 0))) == (True, False)


@pytest.mark.parametrize("entry", KNOWN_GAPS, ids=lambda g: g.id)
def test_every_range_agrees_with_its_evidence(entry):
    assert evidence_problems(entry) == []
    assert entry.seed in SEED_ITEMS
    assert entry.reason.startswith(f"{entry.seed}: ")


Q = ("q35",)


@pytest.mark.parametrize("versions, evidence, problem", [
    (VersionRange((7, 2)), (Measurement("7.2.22", FAILS, Q), Measurement("10.0.2", PASSES, Q)),
     "g: measurement 10.0.2 passes on q35, inside QEMU 7.2 and later"),
    (VersionRange((7, 2), fixed=(9, 0)),
     (Measurement("7.2.22", FAILS, Q), Measurement("10.0.2", PASSES, Q)),
     "g: fixed 9.0 is not the series of a version measured passing"),
    (VersionRange(fixed=(10, 0)), (Measurement("7.2.22", FAILS, Q),),
     "g: introduced None is not the series of the oldest failing measurement 7.2.22"),
    (VersionRange((7, 2), fixed=(10, 0)),
     (Measurement("7.2.22", FAILS, Q), Measurement("10.0.2", FAILS, Q)),
     "g: measurement 10.0.2 fails on q35, outside QEMU 7.2 to before 10.0"),
    (VersionRange((7, 2)), (Measurement("7.2.22", PASSES, Q),), "g: no measurement shows"),
    # More than the endpoints: every measurement is read.
    (VersionRange((7, 2), fixed=(10, 0)),
     (Measurement("7.2.22", FAILS, Q), Measurement("8.1.0", PASSES, Q),
      Measurement("9.2.0", FAILS, Q), Measurement("10.0.2", PASSES, Q)),
     "g: measurement 8.1.0 passes on q35, inside QEMU 7.2 to before 10.0"),
    (VersionRange((7, 2)), (Measurement("7.2", FAILS, Q),),
     "g: measurement 7.2 is a series, not a binary's version"),
    (VersionRange((7, 2)), (Measurement("7.2.22", FAILS, ()),),
     "g: measurement 7.2.22 names no machine type"),
    (VersionRange((7, 2)), (Measurement("7.2.22", FAILS, ("virt",)),),
     "g: measurement 7.2.22: unknown machine type 'virt'"),
    (VersionRange((7, 2)), (Measurement("7.2.22", FAILS, Q), Measurement("7.2.22", PASSES, Q)),
     "g: measurement 7.2.22 both fails and passes on q35"),
    (VersionRange((7, 2)), (Measurement("7.2.22", "flaky", Q),),
     "g: measurement 7.2.22: outcome 'flaky' is neither"),
    # A development build bounds the range at itself, not at its release series.
    (VersionRange((7, 2), fixed=(10, 1)),
     (Measurement("7.2.22", FAILS, Q), Measurement("10.1.50", PASSES, Q)),
     "g: fixed 10.1 is not the series of a version measured passing"),
])
def test_a_range_wider_or_narrower_than_its_evidence_is_named(versions, evidence, problem):
    problems = evidence_problems(gap(versions=versions, evidence=evidence))
    assert any(p.startswith(problem) for p in problems), \
        f"expected a problem starting {problem!r}, got {problems}"


def test_a_measurement_on_a_machine_the_gap_does_not_claim_is_named():
    pc_only = gap(machines=frozenset({"pc"}), evidence=(Measurement("7.2.22", FAILS, ("pc",)),
                                                        Measurement("7.2.22", FAILS, Q)))
    assert evidence_problems(pc_only) == [
        "g: measurement 7.2.22 ran q35, outside the gap's machines pc"]


def test_a_compat_gap_needs_versioned_machine_types_on_the_right_side():
    compat = gap(compat_property="x-pcie-err-unc-mask", machines=frozenset({"q35"}),
                 machine_types=VersionRange(fixed=(8, 0)),
                 evidence=(Measurement("10.0.2", FAILS, ("pc-q35-7.2",)),
                           Measurement("10.0.2", FAILS, ("pc-q35-8.0",)),
                           Measurement("10.0.2", FAILS, ("q35",))),
                 versions=VersionRange((10, 0)))
    assert evidence_problems(compat) == [
        ("g: measurement 10.0.2 fails on pc-q35-8.0, outside QEMU 10.0 and later, q35, machine "
        "types before 8.0 (x-pcie-err-unc-mask)"),
        ("g: measurement 10.0.2 ran 'q35', an alias, and the gap depends on the machine type's "
        "version: record the versioned type")]


def test_a_development_build_measured_passing_sets_fixed_at_itself():
    dev = gap(versions=VersionRange((7, 2), fixed=(10, 1, 50)),
              evidence=(Measurement("7.2.22", FAILS, Q), Measurement("10.1.50", PASSES, Q)))
    assert evidence_problems(dev) == []
    assert dev.holds((10, 1, 3)) and not dev.holds((10, 1, 50)) and not dev.holds((10, 2, 0))


# ---- the basis of an answer: measured on this very version, or inferred

AHCI_LIKE = {"versions": VersionRange((7, 2), fixed=(10, 0)),
                 "evidence": (Measurement("7.2.22", FAILS, Q), Measurement("10.0.2", PASSES, Q))}


@pytest.mark.parametrize("qemu, holds, kind, words", [
    ("7.2.22", True, "measured", "measured on 7.2.22 (q35): fails"),
    ("10.0.2", False, "measured", "measured on 10.0.2 (q35): passes"),
    ("9.1.0", True, "inferred", ("inferred: 9.1.0 was not measured (inside 7.2 to before 10.0); "
                                "measured: 7.2.22 fails (q35); 10.0.2 passes (q35)")),
    ("7.2.5", True, "inferred", "inferred: 7.2.5 was not measured (inside"),
    ("10.1.0", False, "inferred", "inferred: 10.1.0 was not measured (outside"),
    ("9.2.50", True, "inferred", ("inferred: 9.2.50 is a development build on its way to 10.0, "
                                 "where this gap's range (7.2 to before 10.0) changes; judged "
                                 "as 9.2")),
    ("10.0.50", False, "inferred", ("inferred: 10.0.50 was not measured (a development build, "
                                   "outside")),
])
def test_an_unmeasured_version_inside_or_outside_a_range_is_inferred(qemu, holds, kind, words):
    basis = gap(**AHCI_LIKE).basis(qemu)
    assert (basis.holds, basis.kind) == (holds, kind), basis
    assert basis.words.startswith(words), f"expected {words!r}, got {basis.words!r}"


def test_a_machine_kind_never_measured_is_inferred():
    pc_measured = gap(evidence=(Measurement("7.2.22", FAILS, ("pc",)),))
    assert pc_measured.basis("7.2.22", "pc").kind == "measured"
    q35 = pc_measured.basis("7.2.22", "q35")
    assert (q35.kind, q35.holds) == ("inferred", True), q35
    assert q35.words.startswith("inferred: measured on 7.2.22 on pc only, not q35"), q35.words


# ---- the table and the tests agree (read from the source: no collection, no QEMU)

def _is_xfail(node: ast.AST) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Attribute) and target.attr == "xfail"


def _known_gap_ids(decorator: ast.expr) -> list[str]:
    if (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "known_gap" and decorator.args
            and isinstance(decorator.args[0], ast.Constant)):
        return [str(decorator.args[0].value)]
    return []


def scan(source: str) -> tuple[dict[str, set[str]], list[int]]:
    """({test name: gap ids on it}, lines with a literal xfail) of one test module."""
    tree = ast.parse(source)
    marked: dict[str, set[str]] = {}
    xfails = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call | ast.Attribute)
              and _is_xfail(n)]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            marked[node.name] = {i for d in node.decorator_list for i in _known_gap_ids(d)}
    return marked, sorted(set(xfails))


def scan_suite(root: Path) -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    marked: dict[str, set[str]] = {}
    xfails: dict[str, list[int]] = {}
    for path in sorted(root.rglob("test_*.py")):
        found, lines = scan(path.read_text())
        for name, ids in found.items():
            marked.setdefault(name, set()).update(ids)
        if lines:
            xfails[str(path.relative_to(root))] = lines
    return marked, xfails


def table_problems(marked: dict[str, set[str]], gaps: tuple[KnownGap, ...]) -> list[str]:
    problems = []
    for entry in gaps:
        problems += [f"{entry.id}: test {name} does not exist" for name in entry.tests
                     if name not in marked]
        problems += [f"{entry.id}: test {name} lacks @pytest.mark.known_gap({entry.id!r})"
                     for name in entry.tests if name in marked and entry.id not in marked[name]]
    listed = {(name, entry.id) for entry in gaps for name in entry.tests}
    problems += [f"test {name} names known gap {gap_id!r}, whose tests do not list it"
                 for name, ids in marked.items() for gap_id in ids if (name, gap_id) not in listed]
    return problems


def test_the_table_and_the_suite_name_each_other():
    marked, _ = scan_suite(TESTS)
    assert table_problems(marked, KNOWN_GAPS) == []


def test_no_test_states_a_known_failure_itself():
    """The reason lives in the table only: no literal xfail in the real-QEMU suite."""
    assert scan_suite(TESTS)[1] == {}


def test_the_scans_see_a_literal_xfail_and_a_missing_marker():
    source = ('import pytest\n@pytest.mark.xfail(strict=True, reason="x")\ndef test_a(): pass\n'
              'def test_b(request):\n    request.applymarker(pytest.mark.xfail(reason="y"))\n'
              '@pytest.mark.known_gap("other")\ndef test_c(): pass\n')
    marked, xfails = scan(source)
    assert xfails == [2, 5]
    assert table_problems(marked, (gap(),)) == [
        "g: test test_x does not exist",
        "test test_c names known gap 'other', whose tests do not list it"]
    assert table_problems({"test_x": set()}, (gap(),)) == [
        "g: test test_x lacks @pytest.mark.known_gap('g')"]
