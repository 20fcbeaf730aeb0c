"""`pci-harness nightly` end to end on a suite that starts no QEMU.

The QEMU binary is a shell script that only answers `-version` and
`-machine help` (all the nightly asks of it); the suite is written per test
into tmp_path.  This covers the collector under pytest-xdist, the four files,
the exit statuses and the baseline, in seconds; tests/pci/test_nightly.py
does the same with real guests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.report import hunt

FAKE_QEMU = """\
#!/bin/sh
case "$1" in
  -version) echo "QEMU emulator version 9.9.1 (fake for tests)";;
  -machine) printf 'Supported machines are:\\npc   Standard PC (alias of pc-i440fx-9.9)\\n\
pc-i440fx-9.9   Standard PC (default)\\nq35  Standard PC (Q35) (alias of pc-q35-9.9)\\n\
pc-q35-9.9   Standard PC (Q35)\\n';;
  *) echo "fake qemu cannot run guests" >&2; exit 1;;
esac
"""

SUITE = '''
import os
import pytest

@pytest.mark.seed("pci-connectivity")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_param(machine):
    assert machine in os.environ.get("CANARY_GOOD_MACHINES", "pc,q35").split(","), machine

@pytest.mark.seed("master-abort")
@pytest.mark.xfail(strict=True, reason="master-abort: unassigned reads return 0")
def test_known_gap(machine):
    assert int(os.environ.get("CANARY_READ", "0")) == 0xffffffff

@pytest.fixture(scope="session")
def harness_factory():
    class Planner:  # stands in for GuestFactory: the collector watches plan()
        def plan(self, topology, **overrides):
            return topology.machine
    return Planner()

@pytest.mark.seed("q35-hotplug")
def test_own_topology(harness_factory):
    from harness.topology import topology_from_dict
    assert harness_factory.plan(topology_from_dict({"machine": "pc-i440fx-7.2"})) == "pc-i440fx-7.2"

def test_console_of_a_failure(artifacts):
    (artifacts / "src").mkdir()
    (artifacts / "src" / "console.log").write_text("line\\n" * 60 + "\\x1b[6nBUG: kernel oops\\n")
    assert os.environ.get("CANARY_FAIL") is None, "canary failure"
'''


def fake_qemu(tmp_path: Path) -> Path:
    path = tmp_path / "qemu-fake"
    path.write_text(FAKE_QEMU)
    path.chmod(0o755)
    return path


def nightly(tmp_path, *args, env=None, suite=SUITE):
    (tmp_path / "suite").mkdir(exist_ok=True)
    (tmp_path / "suite" / "test_canary.py").write_text(textwrap.dedent(suite))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CANARY_"))}
    argv = [sys.executable, "-m", "harness", "nightly", "--qemu", str(fake_qemu(tmp_path)),
            "--json", *args]
    if "--boot-stress-boots" not in args:  # the fake QEMU boots nothing
        argv[argv.index("--json"):argv.index("--json")] = ["--boot-stress-boots", "0"]
    if "--" not in args:
        argv += ["--", str(tmp_path / "suite")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path,
                          env=clean | (env or {}), timeout=180, check=False)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return proc, json.loads(last)


def by_node(report):
    return {t["nodeid"].split("::")[-1]: t for t in report["tests"]}


def test_passes_and_known_failures_exit_0_with_four_files_under_xdist(tmp_path):
    out = tmp_path / "reports" / "one"
    proc, verdict = nightly(tmp_path, "--output", str(out), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert verdict["ok"] is True and verdict["failures"] == []
    assert sorted(p.name for p in out.iterdir()) == \
        ["junit.xml", "report.html", "report.json", "runs", "summary.md"]
    report = json.loads((out / "report.json").read_text())
    tests = by_node(report)
    assert {n: (t["outcome"], t["machine"], t["seed"]) for n, t in tests.items()} == {
        "test_param[pc]": ("passed", "pc", "pci-connectivity"),
        "test_param[q35]": ("passed", "q35", "pci-connectivity"),
        "test_known_gap": ("xfailed", "q35", "master-abort"),  # the default machine fixture
        "test_own_topology": ("passed", "pc-i440fx-7.2", "q35-hotplug"),  # the planned guest
        "test_console_of_a_failure": ("passed", None, None)}
    assert tests["test_known_gap"]["xfail_reason"] == "master-abort: unassigned reads return 0"
    assert {t["qemu_version"] for t in report["tests"]} == {"9.9.1"}
    assert {t["worker"] for t in report["tests"]} <= {"gw0", "gw1"}
    assert report["items"]["pci-connectivity"] == {"pc": {"9.9.1": "pass"},
                                                   "q35": {"9.9.1": "pass"}}
    assert report["items"]["master-abort"] == {"pc": {"9.9.1": "not-run"},
                                               "q35": {"9.9.1": "known-failure"}}
    junit = ET.parse(out / "junit.xml").getroot()
    assert len(list(junit.iter("testcase"))) == 5
    assert "| pci-connectivity | 1 pass | 1 pass |" in (out / "summary.md").read_text()
    assert report["item_counts"]["master-abort"] == {"pc": {"9.9.1": {}},
                                                     "q35": {"9.9.1": {"known-failure": 1}}}
    assert "no earlier run" in report["baseline_note"]


def test_a_broken_second_run_is_a_regression_and_exits_1(tmp_path):
    reports = tmp_path / "reports"
    first, _ = nightly(tmp_path, "--output", str(reports / "a"), "--jobs", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    second, verdict = nightly(tmp_path, "--output", str(reports / "b"), "--jobs", "0",
                              env={"CANARY_GOOD_MACHINES": "pc", "CANARY_FAIL": "1"})
    assert second.returncode == 1, second.stderr[-3000:]
    # Node ids are relative to the inner run's rootdir, which depends on where
    # the checkout and the temporary directory are: compare from the file on.
    assert [n[n.index("test_canary.py"):] for n in verdict["regressions"]] == \
        ["test_canary.py::test_console_of_a_failure", "test_canary.py::test_param[q35]"]
    summary = (reports / "b" / "summary.md").read_text()
    regressions = summary.split("### Regressions (2)")[1].split("##")[0]
    assert "test_canary.py::test_param[q35]` (pci-connectivity, q35, QEMU 9.9.1): " \
           "passed -> failed" in regressions, summary
    assert "matrix: pci-connectivity / q35 / QEMU 9.9.1: pass -> fail" in summary
    assert f"## Compared with {reports / 'a'}" in summary
    tail = by_node(json.loads((reports / "b" / "report.json").read_text()))[
        "test_console_of_a_failure"]["console_tail"]
    assert list(tail) == ["src"] and tail["src"].splitlines()[-1] == "BUG: kernel oops"
    assert len(tail["src"].splitlines()) == 40


@pytest.mark.parametrize("env, why", [
    ({"CANARY_READ": str(0xffffffff)}, "1 xpassed"),   # a strict xfail passed
    ({"CANARY_FAIL": "1"}, "1 failed"),
])
def test_unexpected_pass_or_failure_exits_1(tmp_path, env, why):
    proc, verdict = nightly(tmp_path, "--output", str(tmp_path / "r"), "--jobs", "0", env=env)
    assert (proc.returncode, verdict["reasons"]) == (1, [why]), proc.stderr[-3000:]


def test_no_tests_is_a_failure(tmp_path):
    proc, verdict = nightly(tmp_path, "--output", str(tmp_path / "r"), "--jobs", "0",
                            "--", str(tmp_path / "suite"), "-k", "no_such_test")
    assert proc.returncode == 1
    assert verdict["reasons"] == ["QEMU 9.9.1: no tests were collected (pytest exit 5)"]


def test_machines_deselects_other_kinds(tmp_path):
    proc, _ = nightly(tmp_path, "--output", str(tmp_path / "r"), "--jobs", "0",
                      "--machines", "pc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert sorted(by_node(report)) == ["test_console_of_a_failure", "test_own_topology",
                                       "test_param[pc]"]


@pytest.mark.parametrize("args, message", [
    (["--machines", "pc,sparc"], "unknown machine type 'sparc'"),
    (["--machines", "pc-q35-7.2"], "--machines takes machine kinds"),
    (["--jobs", "many"], "--jobs 'many' is not auto"),
    (["--baseline", "/nonexistent"], "baseline /nonexistent has no report.json"),
    (["--qemu", "/nonexistent/qemu"], "does not exist"),
    (["--", "--no-such-pytest-option"], "pytest rejected the arguments"),
    (["--suite", "/nonexistent"], "--suite /nonexistent: no such directory"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    proc, verdict = nightly(tmp_path, "--output", str(tmp_path / "r"), *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in verdict["error"] + proc.stderr


@pytest.mark.parametrize("where", [None, "elsewhere"])
def test_suite_runs_in_its_directory_and_reports_go_under_the_current_one(tmp_path, where):
    """--suite DIR: pytest runs in DIR with no path given (its own configuration and
    test ids); without --output the report goes to ./reports/<date-time>/ of the
    directory nightly runs in, or under --report-dir."""
    extra = ["--report-dir", str(tmp_path / where)] if where else []
    proc, verdict = nightly(tmp_path, "--jobs", "0", "--suite", str(tmp_path / "suite"), *extra,
                            "--", "-k", "test_param")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = Path(verdict["output"])
    assert output.parent == tmp_path / (where or "reports"), output
    report = json.loads((output / "report.json").read_text())
    assert sorted(t["nodeid"] for t in report["tests"]) == \
        ["test_canary.py::test_param[pc]", "test_canary.py::test_param[q35]"]
    log = (output / "runs" / "9.9.1" / "pytest.log").read_text()
    assert log.startswith(f"$ cd {tmp_path / 'suite'} && "), log.splitlines()[0]


def test_an_existing_report_is_never_overwritten(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text("{}")
    proc, verdict = nightly(tmp_path, "--output", str(tmp_path / "r"))
    assert proc.returncode == 2 and "already holds a nightly report" in verdict["error"]


def test_missing_pingpong_verb_is_an_error_not_a_skip(monkeypatch):
    def run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 2, "", "invalid choice: 'pingpong'")

    monkeypatch.setattr(hunt.subprocess, "run", run)
    with pytest.raises(UserError, match="pingpong verb does not exist"):
        hunt.check_available()


def test_hunt_result_is_the_last_json_line_and_a_hang_is_killed(tmp_path, monkeypatch):
    script = "import json,sys; print('noise'); print(json.dumps({'ok': False, 'hops': 7, " \
             "'failures': ['hop 7: FIS receive']})); sys.exit(1)"
    found = hunt.run_hunt("9.9.1", [sys.executable, "-c", script], 1, tmp_path / "a.log",
                          tmp_path / "art")
    assert (found.exit_status, found.ok, found.error, found.result) == \
        (1, False, None, {"ok": False, "hops": 7, "failures": ["hop 7: FIS receive"]})
    monkeypatch.setattr(hunt, "SLACK_S", 1.0)
    hung = hunt.run_hunt("9.9.1", [sys.executable, "-c", "import time; time.sleep(60)"], 0.5,
                         tmp_path / "b.log", tmp_path / "art")
    assert hung.error is not None and "killed" in hung.error and hung.duration_s < 30


def test_tx_gateways_pass_through_to_xdist(tmp_path):
    """Two gateways given with --tx (the remote-execution story on one machine)."""
    venv_python = sys.executable  # this venv's python, wherever it lives (tox, .venv)
    proc, _ = nightly(tmp_path, "--output", str(tmp_path / "r"),
                      "--tx", "popen", "--tx", f"popen//python={venv_python}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    workers = report["runs"][0]["workers"]
    assert sorted(w["id"] for w in workers) == ["gw0", "gw1"]
    assert any(w["spec"].endswith(f"popen//python={venv_python}") for w in workers), workers
    assert {t["worker"] for t in report["tests"]} == {"gw0", "gw1"}


def test_hunt_that_dies_without_a_verdict_says_why(tmp_path):
    script = ("import sys; print('hop 1 ok', file=sys.stderr); "
              "print('harness.scenarios.migration.hop.HopFailure: hop 2: guest-trouble: BUG: x', "
              "file=sys.stderr); print('--- last output ---', file=sys.stderr); sys.exit(1)")
    found = hunt.run_hunt("9.9.1", [sys.executable, "-c", script], 1, tmp_path / "a.log",
                          tmp_path / "art")
    assert (found.ok, found.result) == (False, None)
    assert found.error == ("exit status 1 without a JSON verdict; it said: "
                           "harness.scenarios.migration.hop.HopFailure: hop 2: guest-trouble: BUG: x")
    assert "HopFailure" in (tmp_path / "a.log").read_text()


def _qemus():
    from harness.qemu.binary import QemuBinary

    old = QemuBinary(Path("/opt/a/qemu"), "7.2.22", "QEMU 7.2.22",
                     frozenset({"q35", "pc-q35-7.2"}), (("q35", "pc-q35-7.2"),))
    new = QemuBinary(Path("/opt/b/qemu"), "10.0.2", "QEMU 10.0.2",
                     frozenset({"q35", "pc-q35-10.0", "pc-q35-7.2"}), (("q35", "pc-q35-10.0"),))
    return old, new


def test_two_qemus_get_a_cross_version_pingpong_each_way(tmp_path, monkeypatch):
    import argparse

    from harness import cross_version

    seen = []

    def run_hunt(label, command, seconds, log_path, artifacts, multiplier=1.0):
        seen.append({"label": label, "command": command, "seconds": seconds, "log": log_path})
        return f"verdict {len(seen)}"

    monkeypatch.setattr(cross_version.hunt, "run_hunt", run_hunt)
    old, new = _qemus()
    args = argparse.Namespace(cross_version_hops=6, accel="tcg", timeout_multiplier=2.0,
                              keep_artifacts=False)
    # --qemu NEW --qemu OLD: the machine is still what q35 means on the older QEMU.
    machine = cross_version.cross_version_machine(new, old)
    assert machine == "pc-q35-7.2"
    runs = cross_version.cross_version_runs(args, [new, old], ["10.0.2", "7.2.22"],
                                            machine, tmp_path)
    assert seen == []  # nothing runs until a suite's thread takes it
    verdicts = [run() for run in runs]
    assert verdicts == ["verdict 1", "verdict 2"]
    assert [s["label"] for s in seen] == ["10.0.2 -> 7.2.22 (cross-version, pc-q35-7.2)",
                                          "7.2.22 -> 10.0.2 (cross-version, pc-q35-7.2)"]
    for run, (src, dst) in zip(seen, [(new, old), (old, new)]):
        command = run["command"]
        assert command[command.index("--hops") + 1] == "6"
        assert command[command.index("--machine") + 1] == "pc-q35-7.2"
        assert f"--qemu-binary={src.path}" in command and f"--dst-qemu={dst.path}" in command
        assert "--json" in command and "--accel=tcg" in command
        assert run["seconds"] == 6 * cross_version.CROSS_HOP_BUDGET_S
        assert run["log"].parent.is_dir()
    assert seen[0]["log"].parent != seen[1]["log"].parent


def test_two_qemus_without_a_shared_machine_type_are_refused_up_front():
    from harness import cross_version

    old, new = _qemus()
    new = replace(new, machines=frozenset({"q35", "pc-q35-10.0"}))
    with pytest.raises(UserError, match="QEMU 10.0.2 .* has no machine type pc-q35-7.2, what "
                                        "q35 means on QEMU 7.2.22"):
        cross_version.cross_version_machine(old, new)


def test_crash_hunt_runs_the_memory_and_fs_loads_and_reports_what_it_verified(tmp_path,
                                                                              monkeypatch):
    import argparse

    from harness import nightly
    from harness.report.markdown import hunt_words

    seen = []

    def run_hunt(label, command, seconds, log_path, artifacts, multiplier=1.0):
        seen.append(command)
        return "verdict"

    monkeypatch.setattr(nightly.hunt, "run_hunt", run_hunt)
    old, _ = _qemus()
    args = argparse.Namespace(
        until_fail_minutes=20, accel="tcg", timeout_multiplier=1.0, keep_artifacts=False,
        hunt_load=nightly.HUNT_LOAD, hunt_keep_states=nightly.HUNT_KEEP_STATES)
    nightly._hunt(args, old, "7.2.22", tmp_path)
    command = seen[0]
    assert "--load=memory,fs" in command and "--keep-states=2" in command, command
    assert command[command.index("--max-time") + 1] == "1200"
    words = hunt_words({"hops": 40, "seed": 3, "verified_mib": 10240.5, "verified_pages": 9000,
                        "verified_files": 1234, "failures": []}, None)
    assert "verified 10240.5 MiB (9000 page checks) and 1234 files" in words, words
