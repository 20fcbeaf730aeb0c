"""Private run directories: 0700, owned, and swept when their owner died."""

import os
import subprocess
import sys

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
