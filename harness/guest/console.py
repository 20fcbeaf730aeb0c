"""The guest's serial console, read with pexpect.

QEMU connects its serial chardev to a socket the harness accepted, and also
writes every byte to `console.log` (chardev `logfile=`), so the artifact is
complete whether or not a test ever reads the console.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from pathlib import Path

import pexpect
from pexpect.fdpexpect import fdspawn

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError

#: Lines that mean the guest kernel is in trouble, whatever the test does.
KERNEL_TROUBLE = re.compile(
    r"(Kernel panic|Oops:|BUG:|general protection fault|"
    r"INFO: task .* blocked for more than|nobody cared|Disabling IRQ #|"
    r"I/O error|Call Trace:)")


class ConsoleClosed(HarnessError):
    """The console stream ended: QEMU exited."""


class Console:
    def __init__(self, sock: socket.socket, log_path: Path):
        self._sock = sock
        self.log_path = log_path
        self._spawn = fdspawn(sock.fileno(), encoding="utf-8", codec_errors="replace",
                              timeout=None)

    def expect(self, pattern: str, deadline: Deadline) -> str:
        """Wait for regex `pattern`; return the matched text."""
        try:
            self._spawn.expect(pattern, timeout=max(deadline.remaining(), 0.01))
        except pexpect.TIMEOUT:
            raise DeadlineExceeded(f"{deadline.describe()}: {pattern!r} never appeared on "
                                   "the serial console", tail=self.tail()) from None
        except pexpect.EOF:
            raise ConsoleClosed(f"the serial console closed while waiting for {pattern!r}",
                                tail=self.tail()) from None
        match = self._spawn.match
        return match.group(0) if match else ""

    def expect_any(self, patterns: Sequence[str], deadline: Deadline) -> tuple[int, str]:
        """Wait for the first of several regexes; return its index and the matched text."""
        try:
            index = self._spawn.expect(list(patterns), timeout=max(deadline.remaining(), 0.01))
        except pexpect.TIMEOUT:
            raise DeadlineExceeded(f"{deadline.describe()}: none of {list(patterns)!r} appeared "
                                   "on the serial console", tail=self.tail()) from None
        except pexpect.EOF:
            raise ConsoleClosed(f"the serial console closed while waiting for {patterns!r}",
                                tail=self.tail()) from None
        match = self._spawn.match
        return int(index), (match.group(0) if match else "")

    def send_line(self, line: str) -> None:
        self._spawn.send(line + "\n")

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def trouble(self) -> list[str]:
        """Every console line that reports a kernel oops/panic/hang/IRQ/I-O problem."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.replace("\r", "").splitlines() if KERNEL_TROUBLE.search(line)]

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
