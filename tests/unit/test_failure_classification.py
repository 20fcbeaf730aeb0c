"""Which verdict an error during a hop's checks stands for (scenarios/migration/
failure.py): only the guest's SSH dying is ssh-dead, only a guest deadline is
guest-hang; QEMU's monitor not answering, a command QEMU refused or a failed
guest command are named for what they are, so no known gap takes them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from harness.errors import DeadlineExceeded, GuestCommandFailed, HarnessError
from harness.guest.ssh import SshUnavailable
from harness.qemu.qmp import QmpCommandError, QmpConnectionLost, QmpTimeout
from harness.scenarios.migration.failure import classify_failure


def _guest(name: str, trouble: list[str] | None = None) -> Any:
    return SimpleNamespace(name=name, process=SimpleNamespace(alive=lambda: True),
                           console=SimpleNamespace(trouble=lambda: trouble or []))


@pytest.mark.parametrize("error, kind", [
    (QmpCommandError("dump-guest-memory", "dump: failed to save memory", "GenericError"),
     "harness-error"),
    (QmpTimeout("QMP dump-guest-memory got no answer within 60 s"), "qemu-hang"),
    (QmpConnectionLost("QMP connection lost during query-pci: EOFError()"), "harness-error"),
    (HarnessError("unreadable fs load state 'x' (timeout)"), "harness-error"),
    (DeadlineExceeded("the guest command 'sync' did not finish within 60 s"), "guest-hang"),
    (SshUnavailable("SSH connection to the guest is gone (ping)"), "ssh-dead"),
    (GuestCommandFailed("md5sum /mnt/f1", 1, "md5sum: /mnt/f1: No such file"),
     "guest-command-failed"),
])
def test_each_error_gets_its_own_kind(error, kind):
    failure = classify_failure(error, 3, [_guest("g03")], None)
    assert (failure.kind, failure.hop) == (kind, 3), failure.describe()
    assert error.message in failure.detail, failure.detail


def test_a_console_that_shows_trouble_names_it_before_the_error():
    failure = classify_failure(SshUnavailable("gone"), 2,
                               [_guest("g02", ["[ 9.1] Oops: 0002 [#1] SMP"])], None)
    assert failure.kind == "guest-trouble" and "Oops: 0002" in failure.detail, failure.detail


class _Monitor:
    """query-status answers STATUS, or times out (None)."""

    def __init__(self, status: str | None):
        self.status = status

    def execute(self, command: str, arguments: Any = None, timeout: float = 60.0) -> Any:
        assert command == "query-status", command
        if self.status is None:
            raise QmpTimeout(f"QMP query-status got no answer within {timeout:g} s")
        return {"status": self.status, "running": self.status == "running"}


class _Console:
    """A serial console whose shell echoes (answers=True) or stays silent."""

    def __init__(self, answers: bool):
        self.answers = answers
        self.sent: list[str] = []

    def trouble(self) -> list[str]:
        return []

    def send_line(self, line: str) -> None:
        self.sent.append(line)

    def expect(self, pattern: str, deadline: Any) -> str:
        import re

        # The shell's answer is what `echo` prints after expanding $((...)); the
        # echoed command line itself must not match.
        typed = self.sent[-1]
        printed = re.sub(r"\$\(\((\d+)\+(\d+)\)\)",
                         lambda m: str(int(m[1]) + int(m[2])), typed.removeprefix("echo "))
        assert not re.search(pattern, typed), (pattern, typed)
        if self.answers and re.search(pattern, printed):
            return printed
        raise DeadlineExceeded("no echo on the console")

    def tail(self) -> str:
        return "login: "


def _live(status: str | None, answers: bool) -> Any:
    # A QEMU that stays alive: wait() returns None (no exit status) at its deadline.
    process = SimpleNamespace(alive=lambda: True, wait=lambda deadline: None)
    return SimpleNamespace(name="g04", process=process, qmp=_Monitor(status),
                           console=_Console(answers))


@pytest.mark.parametrize("status, answers, error, kind", [
    (None, True, SshUnavailable("SSH connection to the guest is gone (ping)"), "qemu-hang"),
    ("paused", True, SshUnavailable("SSH connection to the guest is gone (ping)"),
     "vm-stopped"),
    ("io-error", False, DeadlineExceeded("the guest command 'sync' did not finish"),
     "vm-stopped"),
    ("running", False, SshUnavailable("SSH connection to the guest is gone (ping)"),
     "guest-hang"),
    ("running", True, SshUnavailable("SSH connection to the guest is gone (ping)"),
     "ssh-dead"),
    ("running", True, DeadlineExceeded("the guest command 'sync' did not finish"),
     "guest-hang"),
])
def test_a_silent_guest_on_a_live_qemu_is_asked_why(status, answers, error, kind):
    """QEMU's runstate, then the serial console, decide between QEMU stuck, the VM
    stopped, the guest hung and SSH alone broken."""
    guest = _live(status, answers)
    failure = classify_failure(error, 4, [guest], guest)
    assert (failure.kind, failure.hop) == (kind, 4), failure.describe()
    assert error.message in failure.detail, failure.detail
    if kind == "vm-stopped":
        assert repr(status) in failure.detail, failure.detail


def test_each_console_probe_asks_with_a_new_marker():
    """A late echo of an earlier probe must not answer a later one."""
    from harness.scenarios.migration.watch import console_answers

    guest = _live("running", True)
    assert console_answers(guest) and console_answers(guest)
    first, second = guest.console.sent
    assert first != second, (first, second)
