"""The host's payload server: a deterministic download for guest NICs to verify.

A NIC load (the INT#x stress, the memory-BAR seed test) downloads it through
slirp and compares the md5 with `PayloadServer.md5`: a corrupted DMA or a lost
interrupt shows as a wrong or a missing download.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from typing import Self

__all__ = ["PAYLOAD_BYTES", "PayloadServer"]

PAYLOAD_BYTES = 1024 * 1024


class PayloadServer:
    """Sends a deterministic payload to every TCP connection (the NICs' load).

    Guests reach it through slirp at 10.0.<subnet>.2:port (the host's loopback).
    """

    def __init__(self, size: int = PAYLOAD_BYTES, seed: int = 7):
        self.payload = random.Random(seed).randbytes(size)
        self.md5 = hashlib.md5(self.payload).hexdigest()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="payload-server", daemon=True)
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
