"""A small GDB remote-serial-protocol client for QEMU's gdbstub, every wait with a deadline.

Why not gdb itself: the harness needs a handful of packets (stop, breakpoint,
continue, single-step, registers, memory) from inside a run, each bounded by a
deadline and logged to the artifact directory; gdb adds a process, a
scripting language and its own timeouts.

QEMU opens the stub on a running guest with HMP `gdbserver unix:PATH,server=on,
wait=off` (a socket in the run directory, no TCP port).  What QEMU does, as
measured on 7.2.22 and 10.0.2 under TCG:
- connecting stops the VM (runstate `paused`; `?` answers `T05`);
- `Z0,ADDR,1` sets a software breakpoint (TCG checks the virtual PC, no code
  is patched), `Z1` a hardware one (what KVM needs: unverified here);
- `c` runs until a breakpoint is hit, `s` single-steps one instruction with
  interrupts and timers masked (QEMU's default sstep flags), both leave the VM
  in runstate `debug`;
- `D` detaches and lets the VM run again.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import HarnessError

__all__ = [
    "X86_64_PC",
    "BreakpointNotHit",
    "GdbError",
    "GdbStub",
    "StopReply",
    "checksum",
    "frame",
]

X86_64_PC = 16        # register number of rip in QEMU's x86_64 `g` layout (16 GPRs first)
_REG_BYTES = 8


class GdbError(HarnessError):
    """The stub answered with an error, or not at all."""


class BreakpointNotHit(GdbError):
    """`c` ran to its deadline without a stop; the VM was interrupted (stopped) again."""


@dataclass(frozen=True)
class StopReply:
    """A stop packet: `T05thread:01;` (signal 5 = SIGTRAP: a breakpoint or a step)."""

    raw: str

    @property
    def signal(self) -> int:
        return int(self.raw[1:3], 16) if self.raw[:1] in ("T", "S") else -1

    @property
    def thread(self) -> int | None:
        match = re.search(r"thread:([0-9a-fA-F]+)", self.raw)
        return int(match.group(1), 16) if match else None


def _is_stop_reply(packet: str) -> bool:
    """T/S packets (`T05thread:01;`, `S05`); no other answer starts so (hex, OK, E..)."""
    return packet[:1] in ("T", "S") and len(packet) >= 3

def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def frame(data: str) -> bytes:
    """One RSP packet: $data#cc ($, #, } escaped: QEMU's packets need none of ours)."""
    raw = data.encode()
    return b"$" + raw + b"#" + checksum(raw)


class GdbStub:
    """One connection to a gdbstub socket.  `connect` stops the VM; `close` detaches."""

    def __init__(self, sock: socket.socket, transcript: Path | None = None):
        self._sock = sock
        self._buf = b""
        self._log = open(transcript, "a") if transcript is not None else None  # noqa: SIM115
        self.stop: StopReply | None = None

    @classmethod
    def connect(cls, path: Path, deadline: Deadline, transcript: Path | None = None) -> GdbStub:
        """Connect to the stub listening on unix socket PATH; the VM stops.

        Connecting stops a running VM, and QEMU 7.2.22 reports that stop on its own
        (T02) besides answering `?` (T05); 10.0.2 does not.  Either answer to `?`
        says the VM stopped, and a late report is skipped by the next request,
        which expects no stop reply (`request`)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(path))
                break
            except OSError as exc:
                if deadline.expired():
                    sock.close()
                    raise GdbError(f"{deadline.describe()}: no gdbstub at {path} ({exc})") \
                        from None
                time.sleep(0.02)
        stub = cls(sock, transcript)
        try:
            stub.stop = StopReply(stub.request("?", deadline, stop_reply=True))
            # In sync from here: 7.2.22's answer to '?' may still be queued behind
            # its own report; `g` skips it, so `s` and `c` get their own answers.
            stub.registers(deadline)
        except BaseException:
            stub.close(detach=False)
            raise
        return stub

    # ---- packets ---------------------------------------------------------
    def _note(self, direction: str, text: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.monotonic():.3f} {direction} {text[:200]}\n")
            self._log.flush()

    def _recv(self, deadline: Deadline) -> None:
        self._sock.settimeout(max(deadline.remaining(), 0.01))
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return
        except OSError as exc:
            raise GdbError(f"the gdbstub connection broke: {exc}") from None
        if not data:
            raise GdbError("the gdbstub closed the connection (did QEMU exit?)")
        self._buf += data

    def send(self, data: str) -> None:
        """Send one packet (QEMU acknowledges with '+', read with the answer)."""
        self._note(">", data)
        self._sock.sendall(frame(data))

    def read_packet(self, deadline: Deadline) -> str | None:
        """The next packet's payload (acknowledged), or None at the deadline."""
        while True:
            while self._buf[:1] in (b"+", b"-"):
                self._buf = self._buf[1:]
            start = self._buf.find(b"$")
            end = self._buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self._buf) >= end + 3:
                payload = self._buf[start + 1:end]
                if checksum(payload) != self._buf[end + 1:end + 3].lower():
                    raise GdbError(f"bad checksum from the gdbstub: {self._buf[:80]!r}")
                self._buf = self._buf[end + 3:]
                self._sock.sendall(b"+")
                text = payload.decode("latin-1")
                self._note("<", text)
                return text
            if deadline.expired():
                return None
            self._recv(deadline)

    def request(self, data: str, deadline: Deadline, stop_reply: bool = False) -> str:
        """Send DATA and read its answer.  Unless the answer is a stop reply
        (`?`, `s`), stop replies that arrive first are stale and skipped."""
        self.send(data)
        while True:
            answer = self.read_packet(deadline)
            if answer is None:
                raise GdbError(f"{deadline.describe()}: no answer to {data!r} from the gdbstub")
            if stop_reply or not _is_stop_reply(answer):
                return answer

    def _ok(self, data: str, deadline: Deadline) -> None:
        answer = self.request(data, deadline)
        if answer == "":
            raise GdbError(f"the gdbstub does not support {data.split(',')[0]!r}")
        if answer != "OK":
            raise GdbError(f"the gdbstub answered {answer!r} to {data!r}")

    # ---- verbs -----------------------------------------------------------
    def insert_breakpoint(self, address: int, deadline: Deadline, hardware: bool = False) -> None:
        self._ok(f"Z{1 if hardware else 0},{address:x},1", deadline)

    def remove_breakpoint(self, address: int, deadline: Deadline, hardware: bool = False) -> None:
        self._ok(f"z{1 if hardware else 0},{address:x},1", deadline)

    def cont(self, deadline: Deadline) -> StopReply:
        """Run until a breakpoint stops the VM.  At the deadline the VM is
        interrupted (Ctrl-C), so it is stopped either way, and BreakpointNotHit raised."""
        self.send("c")
        answer = self.read_packet(deadline)
        if answer is None:
            self._sock.sendall(b"\x03")
            self.stop = StopReply(self.read_packet(Deadline(10, "gdbstub interrupt")) or "")
            raise BreakpointNotHit(f"{deadline.describe()}: no breakpoint was hit")
        self.stop = StopReply(answer)
        return self.stop

    def step(self, deadline: Deadline) -> StopReply:
        """One instruction (interrupts and timers masked)."""
        self.stop = StopReply(self.request("s", deadline, stop_reply=True))
        return self.stop

    def registers(self, deadline: Deadline) -> bytes:
        answer = self.request("g", deadline)
        if answer.startswith("E") and len(answer) == 3:
            raise GdbError(f"the gdbstub refused to read registers: {answer}")
        return bytes.fromhex(answer)

    def register(self, number: int, deadline: Deadline) -> int:
        raw = self.registers(deadline)
        return int.from_bytes(raw[number * _REG_BYTES:(number + 1) * _REG_BYTES], "little")

    def pc(self, deadline: Deadline) -> int:
        return self.register(X86_64_PC, deadline)

    def read_memory(self, address: int, length: int, deadline: Deadline) -> bytes:
        answer = self.request(f"m{address:x},{length:x}", deadline)
        if answer.startswith("E") and len(answer) == 3:
            raise GdbError(f"the gdbstub cannot read {length} bytes at {address:#x}: {answer}")
        return bytes.fromhex(answer)

    def close(self, detach: bool = True) -> None:
        """Detach (the VM runs again) unless told not to, and close the socket."""
        try:
            if detach:
                self.request("D", Deadline(5, "gdbstub detach", scaled=False))
        except (GdbError, OSError):
            pass
        finally:
            self._sock.close()
            if self._log is not None:
                self._log.close()
                self._log = None
