"""The console drains QEMU's output whether or not anyone waits on it.

QEMU's UART writes one byte per write().  Over the Unix socket the harness
used before, ~280 such bytes filled it and the guest's serial output stalled
(console.log, which QEMU writes only for bytes the chardev took, lost the
rest).  These tests play QEMU's side of `-chardev pipe`: the same FIFOs, opened
read-write like char-pipe.c does, written one byte at a time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.deadline import Deadline
from harness.guest.console import Console, ConsoleClosed, ConsoleFifos


class FakeQemu:
    """QEMU's ends of the console FIFOs (char-pipe.c opens both O_RDWR and
    makes the output non-blocking)."""

    def __init__(self, base: Path):
        self.out_fd = os.open(f"{base}.out", os.O_RDWR | os.O_NONBLOCK)
        self.in_fd = os.open(f"{base}.in", os.O_RDWR | os.O_NONBLOCK)

    def send_bytewise(self, data: bytes, seconds: float) -> int:
        """Bytes written, one per write(), before the FIFO stayed full for SECONDS."""
        sent = 0
        stuck_since = None
        while sent < len(data):
            try:
                os.write(self.out_fd, data[sent:sent + 1])
                sent += 1
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > seconds:
                    break
                time.sleep(0.001)
        return sent

    def exit(self) -> None:
        os.close(self.out_fd)
        os.close(self.in_fd)


@pytest.fixture
def console_and_qemu(tmp_path: Path):
    fifos = ConsoleFifos.make(tmp_path / "console")
    qemu = FakeQemu(tmp_path / "console")
    console = Console(fifos, tmp_path / "console.log")
    yield console, qemu
    console.close()
    try:
        qemu.exit()
    except OSError:
        pass


def test_output_never_stalls_while_nobody_expects(console_and_qemu) -> None:
    console, qemu = console_and_qemu
    data = b"".join(b"line %05d of a long oops\n" % i for i in range(2000))
    sent = qemu.send_bytewise(data, seconds=2)
    assert sent == len(data), f"QEMU's side could write {sent} of {len(data)} bytes"
    # pexpect still sees it all, in order, when a test does wait later.
    assert console.expect(r"line 01999 of", Deadline(5, "last line", scaled=False))
    assert console.dropped == 0


def test_eof_reaches_pexpect_when_qemu_exits(console_and_qemu) -> None:
    console, qemu = console_and_qemu
    os.write(qemu.out_fd, b"bye\n")
    qemu.exit()
    with pytest.raises(ConsoleClosed):
        console.expect("never", Deadline(5, "EOF", scaled=False))


def test_send_line_reaches_qemu(console_and_qemu) -> None:
    console, qemu = console_and_qemu
    console.send_line("echo hi")
    assert os.read(qemu.in_fd, 100) == b"echo hi\n"


def test_close_stops_the_drain_while_qemu_lives(console_and_qemu) -> None:
    console, _ = console_and_qemu
    console.close()
    assert not console._drain.is_alive()


def test_the_drain_keeps_going_past_what_pexpect_holds(console_and_qemu) -> None:
    """3 MiB nobody waits for: QEMU never blocks; pexpect's pipe keeps the
    first MiB and the surplus is counted as dropped (console.log, written by
    QEMU itself, would have all of it)."""
    console, qemu = console_and_qemu
    chunk = b"x" * 4095 + b"\n"
    total = 3 << 20
    deadline = time.monotonic() + 10
    written = 0
    while written < total and time.monotonic() < deadline:
        try:
            written += os.write(qemu.out_fd, chunk)
        except BlockingIOError:
            time.sleep(0.001)
    assert written == total, f"QEMU's side could write {written} of {total} bytes in 10 s"
    while console.dropped < total - (1 << 20) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert console.dropped == total - (1 << 20), (
        f"dropped {console.dropped}, expected {total - (1 << 20)} (3 MiB written, 1 MiB kept)")
