"""The plugin turns the known-gap table into strict xfails per QEMU under test.

pytest runs a small suite against fake QEMU binaries (shell scripts that answer
`-version` and `-machine help`, all the plugin asks at collection), without
xdist (the plugin must load with `-p no:xdist` too): the same
test is a known failure on 7.2.22 and a plain test on 10.0.2, where the
table's AHCI gap is fixed.  No QEMU starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.qemu.known import KNOWN_GAPS

FAKE_QEMU = """\
#!/bin/sh
case "$1" in
  -version) echo "QEMU emulator version {version} (fake for tests)";;
  -machine) printf 'Supported machines are:\\nq35  Standard PC (Q35) (alias of pc-q35-{series})\\n\
pc-q35-{series}   Standard PC (Q35)\\npc-q35-7.2   Standard PC (Q35)\\n\
pc   Standard PC (alias of pc-i440fx-{series})\\npc-i440fx-{series}   Standard PC\\n';;
  *) echo "fake qemu cannot run guests" >&2; exit 1;;
esac
"""

AHCI = next(g for g in KNOWN_GAPS if g.id == "ahci-bus-master-cleared-migration")

SUITE = '''
import pytest

pytestmark = pytest.mark.seed("ahci-stability")


class HopFailure(Exception):   # the signature names the class, as migration/watch.py's
    def __init__(self, kind, message):
        super().__init__(f"hop 1: {kind}: {message}")
        self.kind = kind


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_shows_the_gap():
    raise HopFailure("destination-load-failed", "destination dst exited with status 1 while "
                     "loading the migration stream: AHCI: Failed to start FIS receive engine")


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_killed_destination():
    raise HopFailure("qemu-died", "destination dst: killed by SIGKILL")


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_another_message():
    raise HopFailure("destination-load-failed", "destination dst exited with status 1: "
                     "Unknown savevm section")


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_an_assertion():
    assert False, "destination-load-failed: AHCI: Failed to start FIS receive engine"


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_passes():
    pass


@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_fails_another_way():
    raise RuntimeError("precondition: no AHCI disk")


def test_plain():
    pass
'''

# A gap a compat property decides: the machine type, not the binary, says whether it holds.
COMPAT_CONFTEST = '''
import harness.pytestplugin.marking
from harness.qemu.gap import KnownGap, Measurement
from harness.qemu.ranges import VersionRange
from harness.qemu.signature import Signature

harness.pytestplugin.marking.KNOWN_GAPS += (KnownGap(
    id="fake-uncor-mask", seed="link-speed-width", does_instead="UNCOR_MASK reads 0",
    spec="writable", versions=VersionRange((7, 2)), tests=("test_compat",),
    evidence=(Measurement("7.2.22", "fails", ("q35",)),), machines=frozenset({"q35"}),
    compat_property="x-pcie-err-unc-mask", machine_types=VersionRange(fixed=(8, 0)),
    signature=Signature(pattern="^UNCOR_MASK reads 0")),)
'''

COMPAT_SUITE = '''
import pytest


@pytest.mark.seed("link-speed-width")
@pytest.mark.known_gap("fake-uncor-mask")
@pytest.mark.parametrize("machine", ["q35", "pc-q35-7.2", "pc"])
def test_compat(machine):
    assert False, f"UNCOR_MASK reads 0 on {machine}"
'''


def fake_qemu(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"qemu-{version}"
    series = ".".join(version.split(".")[:2])
    path.write_text(FAKE_QEMU.format(version=version, series=series))
    path.chmod(0o755)
    return path


def run_suite(tmp_path: Path, version: str, suite: str = SUITE, conftest: str | None = None):
    """(pytest process, {test name: result record}) of the suite against a fake QEMU."""
    root = tmp_path / f"suite-{version}"
    root.mkdir()
    (root / "test_gaps.py").write_text(textwrap.dedent(suite))
    if conftest:
        (root / "conftest.py").write_text(textwrap.dedent(conftest))
    results = root / "results.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-p", "harness.report.collect", f"--report-results={results}", "-rA",
         f"--qemu-binary={fake_qemu(tmp_path, version)}", f"--artifacts-dir={root / 'art'}",
         str(root)],
        capture_output=True, text=True, cwd=root, env=clean, timeout=120, check=False)
    tests = json.loads(results.read_text())["tests"] if results.exists() else []
    return proc, {t["nodeid"].split("::")[-1]: t for t in tests}


def test_inside_the_range_a_known_failure_and_an_unexpected_pass_fails(tmp_path):
    proc, tests = run_suite(tmp_path, "7.2.22")
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_shows_the_gap": "xfailed", "test_passes": "xpassed",
        "test_fails_another_way": "failed", "test_plain": "passed",
        "test_killed_destination": "failed", "test_another_message": "failed",
        "test_an_assertion": "failed"}, proc.stdout
    assert tests["test_shows_the_gap"]["xfail_reason"] == AHCI.reason
    assert proc.returncode == 1, "a strict xfail that passes must fail the run"
    assert f"[XPASS(strict)] {AHCI.reason}" in proc.stdout


@pytest.mark.parametrize("name, got", [
    ("test_killed_destination", ("HopFailure of kind qemu-died: hop 1: qemu-died: destination "
                                 "dst: killed by SIGKILL")),
    ("test_another_message", ("HopFailure of kind destination-load-failed: hop 1: "
                              "destination-load-failed: destination dst exited with status 1: "
                              "Unknown savevm section")),
    ("test_an_assertion", ("AssertionError: destination-load-failed: AHCI: Failed to start FIS "
                           "receive engine")),
    ("test_fails_another_way", "RuntimeError: precondition: no AHCI disk"),
])
def test_a_failure_with_another_signature_is_a_fail_naming_the_gap(tmp_path, name, got):
    """Only the gap's signature is the known failure: the JSON's message and the
    terminal say which gap it failed differently from, what it expected, what came."""
    proc, tests = run_suite(tmp_path, "7.2.22")
    want = (f"failed differently from known gap {AHCI.id}: expected "
            f"{AHCI.signature.words()}, got {got}")
    assert tests[name]["outcome"] == "failed", tests[name]
    assert tests[name]["message"] == want[:300], (tests[name]["message"], want)
    assert tests[name]["xfail_reason"] is None
    assert want in proc.stdout, proc.stdout[-3000:]


def test_every_gap_has_a_signature_that_takes_a_message_or_kind():
    """A signature of a bare AssertionError would take any assertion again."""
    bare = [g.id for g in KNOWN_GAPS if g.signature.kind is None and g.signature.pattern is None]
    assert bare == [], f"gaps whose signature takes any {bare and 'exception of its class'}"


def test_outside_the_range_a_plain_test_with_a_note(tmp_path):
    proc, tests = run_suite(tmp_path, "10.0.2")
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_shows_the_gap": "failed", "test_passes": "passed",
        "test_fails_another_way": "failed", "test_plain": "passed",
        "test_killed_destination": "failed", "test_another_message": "failed",
        "test_an_assertion": "failed"}, proc.stdout
    assert tests["test_shows_the_gap"]["xfail_reason"] is None
    assert ("known gap ahci-bus-master-cleared-migration (ahci-stability: with Bus Master "
            "Enable cleared") in proc.stdout
    assert "holds for QEMU 7.2 to before 10.0; this QEMU 10.0.2 is outside that range" \
        in proc.stdout


@pytest.mark.parametrize("version, below", [("10.0.0", False), ("7.2.0", True)])
def test_range_edges_on_the_binary_version(tmp_path, version, below):
    _, tests = run_suite(tmp_path, version)
    assert tests["test_shows_the_gap"]["outcome"] == ("xfailed" if below else "failed")


def test_compat_property_gap_follows_the_pinned_machine_type(tmp_path):
    # q35 is pc-q35-10.0 on this binary: outside machine types before 8.0; pc is not q35.
    proc, tests = run_suite(tmp_path, "10.0.2", COMPAT_SUITE, COMPAT_CONFTEST)
    assert {name: t["outcome"] for name, t in tests.items()} == {
        "test_compat[q35]": "failed", "test_compat[pc-q35-7.2]": "xfailed",
        "test_compat[pc]": "failed"}, proc.stdout + proc.stderr


@pytest.mark.parametrize("marks, message", [
    ('@pytest.mark.seed("ahci-stability")\n@pytest.mark.known_gap("no-such-gap")',
     ("unknown known gap 'no-such-gap'. Use one of the ids in harness/qemu/known.py: ")),
    (('@pytest.mark.seed("master-abort")\n'
      '@pytest.mark.known_gap("ahci-bus-master-cleared-migration")'),
     ("known gap ahci-bus-master-cleared-migration belongs to seed item 'ahci-stability', "
      "the test is marked seed('master-abort')")),
])
def test_a_wrong_marker_is_a_usage_error_naming_the_test(tmp_path, marks, message):
    suite = f"import pytest\n\n{marks}\ndef test_x():\n    pass\n"
    proc, _ = run_suite(tmp_path, "7.2.22", suite)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"test_gaps.py::test_x: {message}" in proc.stderr
    # The list of ids names every gap, in whatever order the table holds them.
    if "unknown known gap" in message:
        assert all(gap.id in proc.stderr for gap in KNOWN_GAPS), proc.stderr


TWO_QEMU_SUITE = '''
import pytest

from harness.qemu.binary import find_qemu


@pytest.mark.seed("ahci-stability")
@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_fixed_in_10(pytestconfig):
    version = find_qemu(pytestconfig.getoption("--qemu-binary")).version
    if version.startswith("7."):
        from harness.scenarios.migration.watch import HopFailure

        raise HopFailure("destination-load-failed", 1, f"QEMU {version}: the destination exits "
                         "with status 1: AHCI: Failed to start FIS receive engine")


@pytest.mark.seed("ahci-stability")
def test_plain():
    pass
'''


def test_two_qemu_nightly_judges_each_binary_by_its_own_version(tmp_path):
    """The same gap: a known failure on 7.2.22, a plain pass on 10.0.2, one report."""
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_two.py").write_text(TWO_QEMU_SUITE)
    out = tmp_path / "report"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "nightly", "--qemu", str(fake_qemu(tmp_path, "7.2.22")),
         "--qemu", str(fake_qemu(tmp_path, "10.0.2")), "--cross-version-hops", "0",
         "--boot-stress-boots", "0", "--jobs", "0", "--output", str(out), "--json", "--",
         str(tmp_path / "suite")],
        capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert {(t["run"], t["nodeid"].split("::")[-1]): t["outcome"] for t in report["tests"]} == {
        ("7.2.22", "test_fixed_in_10"): "xfailed", ("7.2.22", "test_plain"): "passed",
        ("10.0.2", "test_fixed_in_10"): "passed", ("10.0.2", "test_plain"): "passed"}
    assert report["items"]["ahci-stability"]["any"] == {"7.2.22": "known-failure",
                                                        "10.0.2": "pass"}
    assert report["item_counts"]["ahci-stability"]["any"] == {
        "7.2.22": {"pass": 1, "known-failure": 1}, "10.0.2": {"pass": 2}}
    summary = (out / "summary.md").read_text()
    assert "| ahci-stability | " in summary and " | 1 pass · 1 known failure | " in summary
    assert f"(QEMU 7.2.22, measured): {AHCI.reason}" in summary
    # Which versions the gap was measured on, and that both runs' answers were measured.
    row = next(g for g in report["known_gaps"] if g["id"] == AHCI.id)
    assert row["measured"] == "7.2.22 fails (q35); 10.0.2 passes (q35)", row
    assert [(r["run"], r["holds"], r["kind"]) for r in row["runs"]] == [
        ("7.2.22", True, "measured"), ("10.0.2", False, "measured")], row["runs"]
    fixed_in_10 = [t for t in report["tests"] if t["nodeid"].endswith("test_fixed_in_10")]
    assert {t["run"]: t["known_gap"] for t in fixed_in_10} == {"7.2.22": AHCI.id,
                                                               "10.0.2": None}, fixed_in_10
