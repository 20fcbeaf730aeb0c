"""A QEMU process that cannot outlive its owner.

QEMU runs in its own process group (so a signal reaches it and anything it
forks) with PR_SET_PDEATHSIG=SIGKILL, so it dies when the Python process that
started it dies -- a finished test, a crashed xdist worker, or a `kill -9` of
pytest.  (The death signal follows the *thread* that forked: start QEMU from a
thread that lives as long as the guest should, normally the main thread.)  `shutdown()` is idempotent and escalates quit -> SIGTERM -> SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import QemuExited

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# Every live QemuProcess of this Python process, so an atexit/signal handler
# can kill what a crashing test left behind.
_live: set[QemuProcess] = set()
_live_lock = threading.Lock()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will
        # ever send the death signal, so die now.
        if os.getppid() != parent_pid:
            os._exit(1)
        # A QEMU that crashes (SIGSEGV, SIGABRT on an assertion) leaves a core
        # when the system allows one: the soft limit goes up to the hard one,
        # and QEMU runs in its artifact directory, where a plain
        # kernel.core_pattern ("core") puts the file.
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if hard != 0:
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    return setup


def core_dump_policy() -> str:
    """Where a crashing QEMU's core goes on this system, in words (for failure notes)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    try:
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        pattern = "?"
    if hard == 0:
        return f"none: the hard RLIMIT_CORE is 0 (core_pattern {pattern!r})"
    if pattern.startswith("|"):
        return f"to the handler {pattern!r}, not to the artifacts"
    if pattern.startswith("/"):
        return f"to {pattern!r}"
    return f"next to qemu.stderr as {pattern!r} (core_pattern; SIGKILL never dumps)"


def describe_returncode(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (signal {-returncode})"
    return f"exited with status {returncode}"


class QemuProcess:
    """One QEMU process; stdout/stderr go to files in `log_dir`."""

    def __init__(self, argv: Sequence[str], log_dir: Path, pass_fds: Sequence[int] = ()):
        self.argv = list(argv)
        self.stderr_path = log_dir / "qemu.stderr"
        self.stdout_path = log_dir / "qemu.stdout"
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # start_new_session: own process group, so killpg reaches QEMU's
            # children too and a terminal's ^C goes to Python, which decides.
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, pass_fds=tuple(pass_fds), cwd=log_dir,
                preexec_fn=_child_setup(os.getpid()))  # noqa: PLW1509 - prctl, getppid, setrlimit
        self.pid = self._popen.pid
        with _live_lock:
            _live.add(self)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def cores(self) -> list[Path]:
        """Core files this process left in its artifact directory."""
        return sorted(p for p in self.stderr_path.parent.glob("core*") if p.is_file())

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exited_error(self, during: str) -> QemuExited:
        """A QemuExited describing how this process ended, with its stderr."""
        rc = self._popen.poll()
        stderr = self.stderr_text().strip()
        return QemuExited(f"QEMU (pid {self.pid}) {describe_returncode(rc)} during {during}",
                          returncode=rc, stderr=stderr, tail=stderr[-3000:] or None)

    def wait(self, deadline: Deadline) -> int | None:
        try:
            return self._popen.wait(timeout=deadline.remaining())
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, grace_s: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit status."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            if self.wait(Deadline(grace_s, "QEMU exit after SIGTERM", scaled=False)) is None:
                self.signal_group(signal.SIGKILL)
                self._popen.wait()
        self._forget()
        return self._popen.returncode

    def reap(self) -> None:
        """Forget a process that has exited on its own."""
        if not self.alive():
            self._forget()

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)


def kill_all_live() -> None:
    """Kill every QEMU this Python process still owns (atexit, signal handlers)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.signal_group(signal.SIGKILL)
        proc.reap()


def qemu_pids_mentioning(marker: str) -> list[int]:
    """Live QEMU processes whose command line contains `marker` (a run's own
    directory): what a test checks to see that no QEMU outlived it."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # it ended while we looked
        if state != "Z" and argv and b"qemu-system" in argv[0] and \
                marker.encode() in b" ".join(argv):
            pids.append(int(proc.name))
    return pids
