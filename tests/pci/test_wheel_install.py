"""The harness as another project uses it: a wheel in a fresh venv, tests anywhere.

A wheel is built from this checkout and installed with its dependencies into
a new venv under a temporary directory (pip's cache is reused).  Then:
- a user's test file and topology file in another temporary directory boot a
  q35 guest with a virtio disk behind two bridges through `make_guest`, under
  `pytest -n 2`, with no conftest of ours; artifacts and reports land there;
- `pci-harness nightly` from that venv, run in an empty directory, runs the
  shipped conformance suite (a -k selection: the lead runs the whole suite)
  and one boot-stress boot of the shipped AHCI-root recipe, and writes its
  reports there.
Neither writes into the installed package (bytecode caches aside).

A nightly self-test (harness.nightly_suite.SELF_TESTS): it builds, installs and
boots guests of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
#: Not copied for the build: setuptools reuses build/lib, so an in-place build of a
#: working checkout ships files deleted since its last build.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".tox", "build", "dist", "*.egg-info",
                                     "__pycache__", "artifacts", "reports", ".mypy_cache",
                                     ".ruff_cache")

#: The user's topology: root port (2.0) -> PCIe-to-PCI bridge -> virtio-blk at 3.0.
BRIDGED_TOML = """\
machine = "q35"

[[device]]
id = "rp1"
driver = "pcie-root-port"
addr = "2.0"

[[device]]
id = "ppb"
driver = "pcie-pci-bridge"
bus = "rp1"

[[device]]
id = "disk0"
driver = "virtio-blk-pci"
bus = "ppb"
addr = "3.0"
disk = "64M"
"""

#: What the guest must show for that topology: the firmware numbers the only
#: bridge chain 1, 2; the disk is 64 MiB in 512-byte sectors.
EXPECTED_PATH = "/pci0000:00/0000:00:02.0/0000:01:00.0/0000:02:03.0/"
EXPECTED_SECTORS = 64 * 1024 * 1024 // 512

USER_TEST = '''
from pathlib import Path

import pytest

from harness.topology import load_topology, topology_from_dict

BRIDGED = load_topology(Path(__file__).with_name("bridged.toml"))
PLAIN = topology_from_dict({"machine": "q35", "device": []})


@pytest.mark.smoke
def test_bridged_virtio_disk(make_guest):
    guest = make_guest(BRIDGED)
    disk = guest.succeed("for b in /sys/block/vd*; do readlink -f $b; done").split()
    assert len(disk) == 1 and "EXPECTED_PATH" in disk[0], disk
    name = disk[0].rsplit("/", 1)[1]
    sectors = int(guest.succeed(f"cat /sys/block/{name}/size"))
    assert sectors == EXPECTED_SECTORS, (sectors, EXPECTED_SECTORS)
    token = "pci-harness-wheel-" + guest.succeed("cat /proc/sys/kernel/random/uuid").strip()
    guest.succeed(f"printf %s {token} | dd of=/dev/{name} bs=4096 conv=sync,fsync 2>/dev/null")
    got = guest.succeed(f"dd if=/dev/{name} bs=4096 count=1 iflag=direct 2>/dev/null")
    assert got.startswith(token), (got[:80], token)


@pytest.mark.seed("pci-connectivity")
def test_plain_q35_from_a_dict(make_guest):
    assert "8086:29c0" in make_guest(PLAIN).succeed("lspci -n")  # the Q35 host bridge
'''.replace("EXPECTED_PATH", EXPECTED_PATH).replace("EXPECTED_SECTORS", str(EXPECTED_SECTORS))


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3*/site-packages"))

    def package_files(self) -> set[str]:
        """Files of the installed package, bytecode caches aside (pytest rewrites
        its plugins' asserts and caches them like any installed plugin)."""
        root = self.site_packages() / "harness"
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # Nothing of this checkout or of the outer pytest leaks into the child.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if not (CHECKOUT / "pyproject.toml").is_file() or not (CHECKOUT / "guest-images").is_dir():
        pytest.skip(f"needs a checkout of pci-harness to build a wheel from ({CHECKOUT} is not)")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(CHECKOUT, source, ignore=_NOT_SOURCE, symlinks=True)
    dist = base / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source],
                 base, 600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    wheel = next(dist.glob("pci_harness-*.whl"))
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", venv], base, 300)
    assert made.returncode == 0, made.stderr[-2000:]
    pip = _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], base, 900)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    yield Installed(wheel, venv)


def _shipped(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_ships_every_recipe_the_suite_and_its_topologies(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = (
        {f"harness/guest_images/{f}" for f in _shipped(CHECKOUT / "guest-images")}
        | {f"harness/suite/tests/pci/{f}" for f in _shipped(CHECKOUT / "tests" / "pci")}
        | {f"harness/suite/topologies/{f}" for f in _shipped(CHECKOUT / "topologies")
           if f.endswith(".toml")}
        | {"harness/suite/pytest.ini", "harness/suite/tests/__init__.py"})
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    strays = sorted(n for n in names - expected if n.startswith(
        ("harness/suite/tests/", "harness/guest_images/")) or "__pycache__" in n)
    assert not strays, f"the wheel ships files the checkout does not have there: {strays}"


def test_user_test_file_anywhere_runs_under_xdist_from_the_wheel(
        installed: Installed, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    project = tmp_path / "my-qemu-tests"
    project.mkdir()
    (project / "bridged.toml").write_text(BRIDGED_TOML)
    (project / "test_my_bridge.py").write_text(textwrap.dedent(USER_TEST))
    before = installed.package_files()

    where = _run([installed.python, "-c", "import harness; print(harness.__file__)"], project, 60)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), \
        f"harness imported from {where.stdout.strip()!r}, not from {installed.venv}"
    argv: list[object] = [installed.python, "-m", "pytest", "-n", "2", "--strict-markers",
                          "-rfE", "--keep-artifacts", "--junitxml=reports/junit.xml",
                          f"--timeout-multiplier={pytestconfig.getoption('--timeout-multiplier')}",
                          f"--accel={pytestconfig.getoption('--accel')}"]
    if pytestconfig.getoption("--qemu-binary"):
        argv.append(f"--qemu-binary={pytestconfig.getoption('--qemu-binary')}")
    proc = _run(argv, project, 900)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, \
        proc.stdout[-4000:] + proc.stderr[-2000:]

    junit = (project / "reports" / "junit.xml").read_text()
    assert 'tests="2"' in junit and 'failures="0"' in junit and 'errors="0"' in junit, junit[:600]
    consoles = sorted(p.relative_to(project) for p in project.glob("artifacts/*/*/guest/console.log"))
    assert [p.parts[2] for p in consoles] == \
        ["test_my_bridge.py_test_bridged_virtio_disk", "test_my_bridge.py_test_plain_q35_from_a_dict"], \
        f"artifacts under {project}: {consoles}"
    added = sorted(installed.package_files() - before)
    assert not added, f"written into the installed package: {added}"


def test_nightly_from_the_wheel_writes_reports_in_an_empty_directory(
        installed: Installed, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    empty = tmp_path / "nightly-here"
    empty.mkdir()
    before = installed.package_files()
    selection = "test_the_example_topologies_cover_the_issue or test_verbs_execute_succeed_wait"
    argv: list[object] = [installed.venv / "bin" / "pci-harness", "nightly", "--json",
                          "--machines", "q35", "--jobs", "2",
                          "--boot-stress-boots", "1",  # boots the shipped AHCI recipe once
                          f"--timeout-multiplier={pytestconfig.getoption('--timeout-multiplier')}",
                          f"--accel={pytestconfig.getoption('--accel')}"]
    if pytestconfig.getoption("--qemu-binary"):
        argv.append(f"--qemu={pytestconfig.getoption('--qemu-binary')}")
    proc = _run(argv + ["--", "-k", selection], empty, 900)
    lines = proc.stdout.strip().splitlines()
    verdict = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0 and verdict.get("ok"), proc.stderr[-4000:]

    reports = sorted(empty.glob("reports/*/report.json"))
    assert [p.parent for p in reports] == [Path(verdict["output"])], (reports, verdict["output"])
    report = json.loads(reports[0].read_text())
    ran = sorted(t["nodeid"] for t in report["tests"])
    assert ran == ["tests/pci/test_boot.py::test_verbs_execute_succeed_wait",
                   "tests/pci/test_compare.py::test_the_example_topologies_cover_the_issue"], ran
    assert {t["outcome"] for t in report["tests"]} == {"passed"}, report["tests"]
    log = next(reports[0].parent.glob("runs/*/pytest.log")).read_text()
    suite = installed.site_packages() / "harness" / "suite"
    assert log.startswith(f"$ cd {suite} && "), log.splitlines()[0]
    added = sorted(installed.package_files() - before)
    assert not added, f"written into the installed package: {added}"
