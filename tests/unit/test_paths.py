"""Private run directories (0700, owned, swept when their owner died) and the cache root."""

import os
import subprocess
import sys

import pytest

from harness.paths import OWNER_FILE, _process_identity, private_dir, sweep_run_dirs


def test_private_dir_is_0700_and_names_its_owner():
    path = private_dir("pcih-test-")
    try:
        assert path.stat().st_mode & 0o777 == 0o700
        assert (path / OWNER_FILE).read_text() == _process_identity(os.getpid())
    finally:
        for p in path.iterdir():
            p.unlink()
        path.rmdir()


def _run_dir(root, name, owner, extra=()):
    path = root / name
    path.mkdir(mode=0o700)
    (path / OWNER_FILE).write_text(owner)
    (path / "qmp.sock").write_text("")
    for item in extra:
        (path / item).write_text("")
    return path


def test_sweep_removes_only_dirs_of_dead_owners(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    gone = _run_dir(tmp_path, "pcih-gone", f"{dead_pid} 12345")
    recycled = _run_dir(tmp_path, "pcih-recycled", f"{os.getpid()} 1")  # same PID, other start
    alive = _run_dir(tmp_path, "pcih-alive", _process_identity(os.getpid()) or "")
    foreign = _run_dir(tmp_path, "pcih-foreign", f"{dead_pid} 12345", extra=("notes.txt",))
    other = _run_dir(tmp_path, "other-gone", f"{dead_pid} 12345")
    removed = sweep_run_dirs("pcih-", root=tmp_path)
    assert sorted(p.name for p in removed) == ["pcih-gone", "pcih-recycled"]
    assert not gone.exists() and not recycled.exists()
    assert alive.exists() and foreign.exists() and other.exists()


def _cli_with_cache(tmp_path, xdg, *args):
    env = {k: v for k, v in os.environ.items() if k != "PCI_HARNESS_CACHE"}
    env["XDG_CACHE_HOME"] = xdg
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120, check=False)


@pytest.mark.parametrize("kind", ["a file", "under /proc"])
@pytest.mark.parametrize("verb", [("nightly", "--output", "out"), ("boot", "--machine", "q35")])
def test_an_unusable_cache_directory_is_one_paragraph_and_exit_2(tmp_path, kind, verb):
    if kind == "a file":
        xdg = tmp_path / "not-a-dir"
        xdg.write_text("")
        expected = f"Not a directory ({xdg} is a file)"
    else:
        xdg, expected = "/proc/no-such-dir", "No such file or directory (/proc/no-such-dir)"
    done = _cli_with_cache(tmp_path, str(xdg), *verb)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    error = [line for line in done.stderr.splitlines() if "cache directory" in line]
    assert len(error) == 1 and expected in error[0] and "Point XDG_CACHE_HOME at a writable " \
        "directory" in error[0], done.stderr
    assert not (tmp_path / "out").exists(), "the nightly wrote a report for bad input"
