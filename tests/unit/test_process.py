"""QemuProcess on ordinary processes: process group, death signal, escalation."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from harness.deadline import Deadline
from harness.qemu.process import QemuProcess, describe_returncode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return status != "Z"


def test_describe_returncode():
    assert describe_returncode(None) == "is still running"
    assert describe_returncode(1) == "exited with status 1"
    assert describe_returncode(-11) == "was killed by SIGSEGV (signal 11)"


def test_own_process_group_and_kill_escalates(tmp_path):
    # A child that ignores SIGTERM: kill() must escalate to SIGKILL.
    proc = QemuProcess([sys.executable, "-c",
                        ("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "time.sleep(60)")], tmp_path)
    time.sleep(0.3)
    assert os.getpgid(proc.pid) == proc.pid
    started = time.monotonic()
    rc = proc.kill(grace_s=0.5)
    assert rc == -signal.SIGKILL, describe_returncode(rc)
    assert time.monotonic() - started < 3
    assert proc.kill() == rc  # idempotent


def test_exited_error_has_status_and_stderr(tmp_path):
    proc = QemuProcess([sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"],
                       tmp_path)
    proc.wait(Deadline(10, "exit", scaled=False))
    err = proc.exited_error("boot")
    assert err.returncode == 3 and "exited with status 3 during boot" in err.message
    assert "boom" in err.stderr


def test_child_dies_with_a_sigkilled_parent(tmp_path):
    # The parent starts a long-running child through QemuProcess, prints its
    # pid, and is then SIGKILLed: PR_SET_PDEATHSIG must take the child along.
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from harness.qemu.process import QemuProcess
        p = QemuProcess(["sleep", "60"], Path({str(tmp_path)!r}))
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"child {child} survived its SIGKILLed parent"


def test_an_aborting_process_leaves_its_core_where_the_policy_says(tmp_path):
    from harness.qemu.process import core_dump_policy

    proc = QemuProcess([sys.executable, "-c", "import os; os.abort()"], tmp_path)
    assert proc.wait(Deadline(30, "abort", scaled=False)) == -signal.SIGABRT
    policy = core_dump_policy()
    if policy.startswith("next to qemu.stderr"):
        assert proc.cores(), f"no core in {tmp_path} although {policy}"
        assert proc.cores()[0].parent == tmp_path
    else:
        assert proc.cores() == [], (policy, proc.cores())


def test_runs_in_its_log_directory(tmp_path):
    proc = QemuProcess([sys.executable, "-c", "import os; print(os.getcwd())"], tmp_path)
    proc.wait(Deadline(30, "exit", scaled=False))
    assert (tmp_path / "qemu.stdout").read_text().strip() == str(tmp_path)
