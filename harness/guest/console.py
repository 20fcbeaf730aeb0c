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

#: Kinds of kernel trouble, each with the console/dmesg text that shows it.  The
#: first kind that matches names a line ("BUG: unable to handle page fault" is
#: an oops, "BUG: soft lockup" a BUG).  The guest's console gets every kernel
#: message at warning level and worse (image.py: loglevel=5) plus the info-level
#: reports of user processes killed by a fault (init.sh forwards them).
TROUBLE_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("kernel panic", r"Kernel panic"),
        ("oops", r"Oops:|BUG: unable to handle|BUG: kernel NULL pointer"),
        ("general protection fault", r"general protection fault"),
        ("hung task", r"INFO: task .* blocked for more than"),
        ("RCU stall", r"rcu: INFO: .*detected stalls?|rcu_\w+ (self-)?detected stall"),
        ("BUG", r"BUG:"),
        ("I/O error", r"I/O error"),
        ("IRQ nobody cared", r"nobody cared|Disabling IRQ #"),
        ("user process fault", r"segfault at|trap invalid opcode|trap divide error"),
        ("kernel warning", r"WARNING: CPU: \d+ PID: \d+"),
        ("call trace", r"Call Trace:"),
    ))

#: Any line of kernel trouble (one regex, for callers that scan dmesg themselves).
KERNEL_TROUBLE = re.compile("|".join(f"(?:{p.pattern})" for _, p in TROUBLE_KINDS))


def trouble_kind(line: str) -> str | None:
    """The kind of kernel trouble a line reports, None for an ordinary line."""
    for kind, pattern in TROUBLE_KINDS:
        if pattern.search(line):
            return kind
    return None


def kernel_trouble(text: str) -> list[str]:
    """Every line of TEXT (console log, dmesg) that reports kernel trouble, as
    "KIND: line" so a verdict names what happened and shows the kernel's words."""
    found = []
    for line in text.replace("\r", "").splitlines():
        kind = trouble_kind(line)
        if kind is not None:
            found.append(f"{kind}: {line.strip()}")
    return found


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
        """Every console line that reports kernel trouble (oops, GPF, BUG, hung task,
        I/O error, IRQ nobody cared, RCU stall, ...), as "KIND: line"."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return kernel_trouble(text)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
