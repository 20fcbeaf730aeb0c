"""A user's test file in any directory, with no conftest or configuration of
ours: the plugin registers its markers and fixtures itself, and artifacts go
under the user's directory (or where the option / ini key says), never into
the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

USER_TEST = '''
import pytest
from harness.topology import topology_from_dict


@pytest.mark.smoke
@pytest.mark.seed("master-abort")
def test_mine(artifacts, make_guest, guest):
    pass


def test_artifacts(artifacts):
    assert topology_from_dict({"machine": "q35"}).machine == "q35"
    (artifacts / "note.txt").write_text("kept")
'''


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "proj"
    (path / "sub").mkdir(parents=True)
    (path / "test_mine.py").write_text(textwrap.dedent(USER_TEST))
    return path


def test_markers_and_fixtures_need_no_conftest(project: Path) -> None:
    # --setup-plan resolves every fixture a test asks for without running one.
    proc = run_pytest(project, "--strict-markers", "--setup-plan", "test_mine.py")
    assert proc.returncode == 0 and "SETUP    F guest" in proc.stdout, proc.stdout + proc.stderr


def test_without_the_plugin_the_same_file_is_refused(project: Path) -> None:
    """The check above can fail: with the plugin off, nothing registers the markers."""
    proc = run_pytest(project, "-p", "no:pci_harness", "--strict-markers", "--setup-plan",
                      "test_mine.py")
    assert proc.returncode != 0 and "'smoke' not found in `markers`" in proc.stdout, proc.stdout


def kept(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory).parent.parent)
                  for p in directory.rglob("test_mine.py_test_artifacts/note.txt"))


@pytest.mark.parametrize("ini, cwd, argv, where", [
    # run from the project (rootdir = the common ancestor, here the project)
    (None, ".", ["test_mine.py"], "artifacts"),
    # run from a subdirectory of a project with an ini: the rootdir, as in a checkout
    ("[pytest]\n", "sub", ["../test_mine.py"], "artifacts"),
    # the ini key, relative to the rootdir
    ("[pytest]\npci_harness_artifacts_dir = out/art\n", "sub", ["../test_mine.py"], "out/art"),
])
def test_artifacts_go_under_the_project(project: Path, ini: str | None, cwd: str,
                                        argv: list[str], where: str) -> None:
    if ini is not None:
        (project / "pytest.ini").write_text(ini)
    proc = run_pytest(project / cwd, "--keep-artifacts", "-k", "test_artifacts", *argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = kept(project)
    assert len(runs) == 1 and Path(runs[0]).parent == Path(where), runs


def test_artifacts_of_a_rootdir_elsewhere_go_under_the_current_directory(
        project: Path, tmp_path: Path) -> None:
    """A rootdir the run is not inside (an installed suite, a path given from
    elsewhere) never receives artifacts: they go under the current directory."""
    (project / "pytest.ini").write_text("[pytest]\n")
    here = tmp_path / "here"
    here.mkdir()
    proc = run_pytest(here, "--keep-artifacts", "-k", "test_artifacts",
                      str(project / "test_mine.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (kept(project), len(kept(here))) == ([], 1), (kept(project), kept(here))
