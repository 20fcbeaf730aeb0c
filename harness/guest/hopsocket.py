"""The host end of an SSH session that lives across live migrations.

Why: a fresh SSH login to every migration destination costs a key exchange
and a login on a guest whose code QEMU has not translated yet (TCG): 0.25-0.4 s
of a ~0.45 s ping-pong hop.  A session that simply carries on costs one
request/answer round trip instead.

How: the guest opens a TCP connection to a slirp `guestfwd` address
(GUESTFWD_IP:GUESTFWD_PORT) and runs `dropbear -i` on it.  slirp saves the
TCP state of guestfwd connections in the migration stream (libslirp
state.c: `slirp_state_save` writes every guestfwd socket), so on the
destination the guest's connection continues; only its host end changes: it
is now the destination QEMU's chardev connection to the harness.  paramiko
keeps one socket object for the session's whole life, so HopSocket stands in
for it and `follow(new)` moves it to the next QEMU's connection.

Order: the previous QEMU stopped before the destination ran, so whatever the
previous connection still holds was sent first; `recv` drains it before it
reads the new one, and the previous connection's EOF (that QEMU quit) is not
the session's EOF.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass

GUESTFWD_IP = "10.0.2.100"
GUESTFWD_PORT = 2222


def guestfwd_option(chardev_path: str) -> str:
    """The `-netdev user` suffix that sends GUESTFWD_IP:PORT to a unix socket (QEMU
    connects to it as a client when it creates the netdev)."""
    return f"guestfwd=tcp:{GUESTFWD_IP}:{GUESTFWD_PORT}-unix:{chardev_path}"


def guest_command(sshd: str) -> str:
    """Shell command (run in the guest) that opens the connection and serves SSH on it.

    busybox nc runs `sshd` with the connection as its stdin and stdout;
    `sshd` must be an executable taking no arguments (nc -e takes one word).
    """
    return (f"setsid nc {GUESTFWD_IP} {GUESTFWD_PORT} -e {sshd} "
            "</dev/null >/dev/null 2>&1 &")


@dataclass
class Leg:
    """What went over one QEMU's connection: when an ssh-dead verdict asks whether
    bytes went to a QEMU after its state was saved (lost) or came from two (twice)."""

    name: str
    sent: int = 0
    received: int = 0
    last_sent: float | None = None
    last_received: float | None = None
    followed: float | None = None   # when the session moved on to the next QEMU

    def describe(self, now: float) -> str:
        def ago(t: float | None) -> str:
            return "never" if t is None else f"{now - t:.2f} s ago"
        moved = f", left {ago(self.followed)}" if self.followed is not None else ""
        return (f"{self.name}: sent {self.sent} B (last {ago(self.last_sent)}), received "
                f"{self.received} B (last {ago(self.last_received)}){moved}")


class HopSocket:
    """Socket-like object for paramiko: reads and writes the current QEMU's connection."""

    def __init__(self, sock: socket.socket, name: str = "g00"):
        self._current = sock
        self._previous: list[socket.socket] = []   # oldest first, drained before current
        self._timeout: float | None = None
        self._lock = threading.Lock()
        self._closed = False  # paramiko's Transport.close() reads it
        self._legs: dict[int, Leg] = {id(sock): Leg(name)}
        self._order: list[Leg] = [self._legs[id(sock)]]

    # -- called by the harness ------------------------------------------------
    def follow(self, sock: socket.socket, name: str = "next") -> None:
        """From now on write to `sock`; read it once the previous connections are drained."""
        sock.settimeout(self._timeout)
        with self._lock:
            self._legs[id(self._current)].followed = time.monotonic()
            self._previous.append(self._current)
            self._current = sock
            self._legs[id(sock)] = leg = Leg(name)
            self._order.append(leg)

    def unsent(self) -> int:
        """Bytes written to the current QEMU's connection that QEMU has not read yet
        (SIOCOUTQ of a unix socket; kernel accounting, so 0 means all read)."""
        with self._lock:
            current = self._current
        try:
            raw = fcntl.ioctl(current.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):  # closed: nothing of it will be read any more
            return 0
        return int(struct.unpack("i", raw)[0])

    def ledger(self, last: int = 3, current: bool = True) -> str:
        """The bytes each of the last `last` connections carried, and when (without
        the current one unless `current`)."""
        now = time.monotonic()
        with self._lock:
            legs = (self._order if current else self._order[:-1])[-last:]
            return "; ".join(leg.describe(now) for leg in legs)

    # -- the socket interface paramiko uses -----------------------------------
    def settimeout(self, timeout: float | None) -> None:
        with self._lock:
            self._timeout = timeout
            self._current.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, size: int) -> bytes:
        with self._lock:
            previous = list(self._previous)
            current = self._current
        for old in previous:
            try:
                ready, _, _ = select.select([old], [], [], 0)
                data = old.recv(size) if ready else None
            except (OSError, ValueError):
                data = b""
            if data is None:
                continue  # nothing waiting (its QEMU is stopped and has not quit yet)
            if data:
                self._count(old, received=len(data))
                return data
            self._retire(old)
        data = current.recv(size)
        self._count(current, received=len(data))
        if not data:
            with self._lock:
                moved = current is not self._current
            if moved:
                # The QEMU we were reading from quit after follow(): not the
                # session's end.  paramiko retries on a timeout.
                raise TimeoutError("previous QEMU connection closed")
        return data

    def send(self, data: bytes) -> int:
        with self._lock:
            current = self._current
        sent = current.send(data)
        self._count(current, sent=sent)
        return sent

    def sendall(self, data: bytes) -> None:
        with self._lock:
            current = self._current
        current.sendall(data)
        self._count(current, sent=len(data))

    def close(self) -> None:
        with self._lock:
            socks = [*self._previous, self._current]
            self._previous = []
            self._closed = True
        for sock in socks:
            sock.close()

    def _count(self, sock: socket.socket, sent: int = 0, received: int = 0) -> None:
        if not sent and not received:
            return
        now = time.monotonic()
        with self._lock:
            leg = self._legs.get(id(sock))
            if leg is None:
                return
            if sent:
                leg.sent += sent
                leg.last_sent = now
            if received:
                leg.received += received
                leg.last_received = now

    def _retire(self, old: socket.socket) -> None:
        with self._lock:
            if old in self._previous:
                self._previous.remove(old)
            self._legs.pop(id(old), None)
        old.close()
