"""What the INT#x stress counts and serves: interrupt counters parsed from the
guest (/proc/interrupts) and from QEMU (HMP `info irq`), and the host's payload
server the NICs download their verified data from."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from typing import Self

__all__ = ["CHUNK", "PayloadServer", "counter_delta", "parse_info_irq", "parse_proc_interrupts"]

CHUNK = 1024 * 1024           # bytes per disk write/read-back and per network download


# --------------------------------------------------------------------------- counters

_PROC_IRQ = re.compile(r"^\s*(\d+):((?:\s+\d+)+)\s+(\S+)\s+(\S+)\s+(.*)$")


def parse_proc_interrupts(text: str) -> dict[int, tuple[int, str, str]]:
    """/proc/interrupts -> {irq: (count summed over CPUs, chip, actions)}."""
    out = {}
    for line in text.splitlines():
        m = _PROC_IRQ.match(line)
        if m:
            out[int(m.group(1))] = (sum(int(x) for x in m.group(2).split()), m.group(3),
                                    m.group(5).strip())
    return out


def parse_info_irq(text: str, controller: str = "ioapic") -> dict[int, int]:
    """HMP `info irq` -> {pin: count} of one interrupt controller."""
    out: dict[int, int] = {}
    section = None
    for line in text.splitlines():
        head = re.match(r"IRQ statistics for (\S+):", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"\s*(\d+):\s*(\d+)", line)
        if m and section == controller:
            out[int(m.group(1))] = int(m.group(2))
    return out


def counter_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after
            if after.get(k, 0) != before.get(k, 0)}


# --------------------------------------------------------------------------- the host side

class PayloadServer:
    """Sends a deterministic payload to every TCP connection (the NICs' load).

    Guests reach it through slirp at 10.0.<subnet>.2:port (the host's loopback).
    """

    def __init__(self, size: int = CHUNK, seed: int = 7):
        self.payload = random.Random(seed).randbytes(size)
        self.md5 = hashlib.md5(self.payload).hexdigest()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intx-payload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            conn.sendall(self.payload)
            self.served += 1
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
