"""The guest's serial console, read with pexpect.

QEMU's serial chardev is a pair of FIFOs (`-chardev pipe`: it writes
`console.out`, reads `console.in`) and it also writes every byte to
`console.log` (chardev `logfile=`), but only the bytes the chardev took.  Its
UART sends one byte per write().  A Unix socket, the obvious chardev, is full
after ~280 such bytes (each is an skb of its own; measured), so a guest whose
console nobody read for a moment stalled: the kernel's console writes timed
out, a long oops never reached console.log, and under load QEMU's transmit
retry doubled bytes ("harnness").  A FIFO merges small writes into pages and
holds PIPE_BYTES; a thread drains it for the guest's whole life into a second
pipe that pexpect reads.  console.log is thus complete whether or not a test
ever waits on the console.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
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
        # libata's error handling on an AHCI port: the failed command, the SError
        # and taskfile status lines, resets
        ("libata error", (r"ata\d+(?:\.\d+)?: (?:failed command|exception Emask|"
                          r"SError: \{|status: \{ .*ERR|COMRESET failed|hard resetting link)")),
        ("file system error", (r"EXT4-fs error|EXT4-fs \(\S+\): (?:error|Remounting "
                               r"filesystem read-only)|JBD2: .*error|Buffer I/O error")),
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


#: What each pipe holds before a writer waits (1 MiB is Linux's default
#: pipe-max-size, settable without privileges): far more than a test prints.
PIPE_BYTES = 1 << 20


def _grow(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a lower pipe-max-size: the default 64 KiB still takes ~240x the socket's


@dataclass
class ConsoleFifos:
    """The harness's ends of `-chardev pipe,path=BASE`: BASE.out (QEMU writes,
    opened here non-blocking so that no QEMU is needed yet) and BASE.in."""

    base: Path
    out_fd: int
    in_fd: int

    @classmethod
    def make(cls, base: Path) -> ConsoleFifos:
        out, inp = Path(f"{base}.out"), Path(f"{base}.in")
        for fifo in (out, inp):
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)
        out_fd = os.open(out, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Read-write: opening a FIFO write-only waits for a reader (QEMU).
        in_fd = os.open(inp, os.O_RDWR | os.O_CLOEXEC)
        _grow(out_fd)
        return cls(base, out_fd, in_fd)

    def close(self) -> None:
        for fd in (self.out_fd, self.in_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Console:
    def __init__(self, fifos: ConsoleFifos, log_path: Path):
        """FIFOS must already be open in QEMU (its console chardev precedes
        QMP on the command line): from then on EOF means QEMU exited."""
        self._fifos = fifos
        self.log_path = log_path
        self.dropped = 0  # bytes pexpect never saw because nobody waited for 1 MiB
        os.set_blocking(fifos.out_fd, True)
        read_end, self._pipe_write = os.pipe2(os.O_CLOEXEC)
        _grow(self._pipe_write)
        os.set_blocking(self._pipe_write, False)
        self._read_end = read_end
        self._closing = False
        self._spawn = fdspawn(read_end, encoding="utf-8", codec_errors="replace",
                              timeout=None)
        self._drain = threading.Thread(target=self._drain_fifo, daemon=True,
                                       name=f"console drain {log_path.parent.name}")
        self._drain.start()

    def _drain_fifo(self) -> None:
        """Copy QEMU's output into pexpect's pipe until QEMU closes it (then
        pexpect sees EOF); drop what pexpect has not read once that pipe is full."""
        try:
            while not self._closing:
                try:
                    data = os.read(self._fifos.out_fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                try:
                    self.dropped += len(data) - os.write(self._pipe_write, data)
                except BlockingIOError:
                    self.dropped += len(data)
                except OSError:
                    break
        finally:
            os.close(self._pipe_write)

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
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self._fifos.in_fd, data):]

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
        """Stop draining (QEMU is gone or going) and close every end."""
        self._closing = True
        if self._drain.is_alive():
            # A live QEMU still holds console.out: wake the blocked read with
            # a byte of our own (the FIFO is open read-only here, so through its path).
            try:
                fd = os.open(f"{self._fifos.base}.out", os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, b"\n")
                os.close(fd)
            except OSError:
                pass
            self._drain.join(timeout=5)
        self._fifos.close()
        try:
            os.close(self._read_end)
        except OSError:
            pass
