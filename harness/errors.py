"""One error hierarchy for the whole harness.

Every error carries enough context to act on without a traceback: what went
wrong, what to do about it, and (for waits) the last output seen.  The CLI and
the pytest plugin print `HarnessError.describe()`; a `UserError` is the user's
input being wrong (exit status 2), anything else is a failure of QEMU, the guest
or the harness itself.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: a message plus an optional fix and an optional output tail."""

    def __init__(self, message: str, *, fix: str | None = None, tail: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.tail = tail

    def describe(self) -> str:
        text = self.message.rstrip(".") + "."
        if self.fix:
            fix = self.fix.rstrip(".")
            text += " " + fix[:1].upper() + fix[1:] + "."
        if self.tail:
            text += "\n--- last output ---\n" + self.tail.rstrip() + "\n---"
        return text

    def __str__(self) -> str:
        return self.describe()


class UserError(HarnessError):
    """The input was wrong: bad option, bad topology, missing tool.  Exit status 2."""


class TopologyError(UserError):
    """A topology file or object does not describe a machine QEMU can build."""


class QemuNotFound(UserError):
    """No usable QEMU binary."""


class AccelUnusable(UserError):
    """The requested accelerator cannot run a guest on this host."""


class DeadlineExceeded(HarnessError):
    """A wait ran past its wall-clock deadline."""


class QemuExited(HarnessError):
    """QEMU exited (or was killed) while the harness still needed it."""

    def __init__(self, message: str, *, returncode: int | None, stderr: str = "",
                 fix: str | None = None, tail: str | None = None):
        super().__init__(message, fix=fix, tail=tail)
        self.returncode = returncode
        self.stderr = stderr


class QemuRefused(UserError):
    """QEMU refused the command line or a QMP command (its own message attached)."""


class GuestNotReady(DeadlineExceeded):
    """The guest never printed its readiness marker before the deadline."""


class GuestCommandFailed(HarnessError):
    """`succeed` ran a guest command that exited non-zero."""

    def __init__(self, command: str, status: int, output: str):
        super().__init__(f"guest command {command!r} exited with status {status}",
                         tail=output)
        self.command = command
        self.status = status
        self.output = output


class ImageBuildError(HarnessError):
    """The guest image could not be built from Debian packages."""
