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
