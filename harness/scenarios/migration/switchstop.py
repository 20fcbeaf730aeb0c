"""Stop a guest's vCPU at a switch point (switchpoint.py) for the migration that follows.

How: HMP `gdbserver unix:PATH,server=on,wait=off` opens QEMU's gdbstub on the
running source (a socket in its private run directory), the harness attaches
(qemu/gdbstub.py), sets a breakpoint at the resolved address and continues
until it is hit (the Nth time for SYMBOL@N; for SYMBOL:return a second
breakpoint at the return address, taken when the stack is back where the
call left it), then single-steps K times.  The stub stays attached through the
migration: detaching would let the VM run on.

Why the stream is rewritten (RunstateRewrite): a VM stopped by the gdbstub is in
runstate `debug`, and the source stores that runstate in the stream's
`globalstate` section; the destination sets it after loading and aborts
("invalid runstate transition: 'inmigrate' -> 'debug'", SIGABRT; QEMU 7.2.22
and 10.0.2, known gap gdbstub-stopped-migration-aborts).  Nothing on the source
leaves `debug` without running the vCPU: QMP `stop` is a no-op on a stopped VM
(vm_stop changes only a running one), HMP `gdbserver none` closes the stub and
leaves `debug`, detaching (`D`) resumes the guest.  So the relay between the
two QEMUs replaces the section's "debug" with "paused" (same length), and the
destination comes up paused with the vCPU exactly where the source stopped;
the harness then sends `cont`.  Nothing else in the stream changes.

Why the harness waits for a quiet SSH session before it stops the vCPU: slirp
keeps running while the VM is stopped, and bytes it sends the guest then (the
close of the check's last SSH channel, `info usernet` SendQ 96) never arrive:
the migrated session stops answering although a new login works.  Measured
with a plain QMP `stop` 0.4 s before the migration as well (7.2.22: hop 2 of
2), and 8 of 8 hops clean after a 1 s pause before the stop; so it is not the
gdbstub's doing.  The hop waits until paramiko has answered sshd's channel
CLOSE (it does so from its own thread, after `execute` returned: a sweep that
checked only the queues broke at hop 32 with SendQ 96 on the source) and the
guestfwd connection's RecvQ and SendQ are 0.  paramiko marks the channel closed
before it writes that answer, so the quiet check could still pass ahead of it
(1 sweep in 20 under CPU load, a new login working, the session's last send
0.44 s before the move): the session now also pings (a round trip behind that
answer) and waits until QEMU has read every byte (the socket's send queue).

Breakpoints are software breakpoints (`Z0`), which TCG checks by PC without
patching guest code.  Under KVM they would be written into guest memory (and
migrated with it), so a KVM guest gets hardware breakpoints (`Z1`, debug
registers): that path is unverified here (this host has no usable KVM).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.guest.hopsocket import GUESTFWD_PORT
from harness.guest.running import Guest
from harness.qemu.gdbstub import BreakpointNotHit, GdbStub
from harness.scenarios.migration.switchhalt import halt_disk
from harness.scenarios.migration.switchpoint import Kallsyms, SwitchPlan, SwitchPoint
from harness.scenarios.migration.watch import HopFailure

__all__ = ["RunstateRewrite", "StopRecord", "Switcher", "disassemble"]

BREAK_SECONDS = 30.0     # until the breakpoint is hit (TCG seconds, scaled)
STUB_SECONDS = 10.0      # one gdbstub exchange
RETURN_TRIES = 1000      # :return hits at the return address from other call sites
RSP = 7                  # x86_64 `g` layout: rax rbx rcx rdx rsi rdi rbp rsp ...
QUIET_SECONDS = 5.0      # for the migrating SSH session's slirp queues to drain


def session_queues(usernet: str, port: int = GUESTFWD_PORT) -> tuple[int, int] | None:
    """(RecvQ, SendQ) of the guestfwd connection in HMP `info usernet`, or None."""
    for line in usernet.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[0] == "TCP[ESTABLISHED]" and cols[5] == str(port):
            return int(cols[6]), int(cols[7])
    return None


def wait_session_quiet(guest: Guest, deadline: Deadline) -> bool:
    """Until the harness has sent its last SSH message (the close of the last
    command's channel) and slirp holds nothing for or from the migrating session
    (see the module docstring); False when it never drained (the stop goes ahead)."""
    assert guest.qmp is not None
    qmp = guest.qmp
    if guest.shell is not None and not guest.shell.settle(deadline):
        return False
    return deadline.poll(lambda: True if session_queues(qmp.hmp("info usernet")) in
                         ((0, 0), None) else None, interval=0.02) is not None


class RunstateRewrite:
    """Rewrites the globalstate section's runstate "debug" to "paused" as the stream
    passes (see the module docstring).  `count` says how often it did."""

    PATTERN = re.compile(rb"(\x0bglobalstate[\x00-\xff]{8})\x00\x00\x00\x06debug\x00\x00",
                         re.DOTALL)
    RUNSTATE = b"\x00\x00\x00\x07paused\x00"   # size 7 (u32 BE), then the buffer
    HOLD = 40   # bytes kept back per chunk: longer than the pattern, so none is split

    def __init__(self) -> None:
        self.count = 0
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        buf, n = self.PATTERN.subn(lambda m: m.group(1) + self.RUNSTATE, self._carry + data)
        self.count += n
        self._carry = buf[-self.HOLD:]
        return buf[:-self.HOLD]

    def flush(self) -> bytes:
        out, self._carry = self._carry, b""
        return out

    def verify(self, hop: int) -> None:
        if self.count != 1:
            raise HarnessError(f"hop {hop}: the relay found {self.count} globalstate runstates "
                               "'debug' in the stream (expected exactly one)")


def disassemble(code: bytes, address: int) -> str | None:
    """The first instruction of CODE (AT&T syntax) by binutils' objdump; None without it."""
    objdump = shutil.which("objdump")
    if objdump is None or not code:
        return None
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        try:
            out = subprocess.run([objdump, "-D", "-b", "binary", "-m", "i386:x86-64",
                                  f"--adjust-vma={address:#x}", f.name],
                                 capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].strip().rstrip(":") == f"{address:x}":
            return " ".join(parts[2].split())
    return None


@dataclass(frozen=True)
class StopRecord:
    """Where the vCPU stood when the hop migrated it."""

    point: SwitchPoint
    address: int | None   # None: a device event (switchhalt.py)
    where: str            # symbol+offset [module], or the halted request
    instruction: str | None
    code: str             # the bytes at the address (hex)
    stop_s: float         # attach -> stopped there (part of the hop's cost)
    runstate: str = "debug"   # the source's, as the stream carries it

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.point.spec(), "steps": self.point.steps,
                "address": None if self.address is None else f"{self.address:#x}",
                "runstate": self.runstate, "where": self.where,
                "instruction": self.instruction, "code": self.code,
                "stop_s": round(self.stop_s, 3), "options": self.point.options()}


class Switcher:
    """Stops each hop's source at its plan's switch point."""

    def __init__(self, plan: SwitchPlan, progress: Callable[[str], None] | None = None):
        self.plan = plan
        self.progress = progress or (lambda message: None)
        self.kallsyms: Kallsyms | None = None
        self.stub: GdbStub | None = None

    def prepare(self, guest: Guest) -> None:
        """Read the guest's symbols and check every symbol the plan names (UserError)."""
        if self.plan.kind == "io-error":
            return
        self.kallsyms = Kallsyms(guest.succeed("cat /proc/kallsyms", timeout=120))
        for symbol in self.plan.symbols_used():
            self.kallsyms.function(symbol)
        if self.plan.point is not None and self.plan.kind == "at":
            self.kallsyms.resolve(self.plan.point)

    def stop(self, guest: Guest, hop: int) -> StopRecord:
        """Stop GUEST's vCPU at hop HOP's switch point; it stays stopped (debug, or
        io-error for a halted request)."""
        assert guest.qmp is not None
        point = self.plan.for_hop(hop)
        t0 = time.monotonic()
        quiet = wait_session_quiet(guest, Deadline(QUIET_SECONDS, "a quiet SSH session"))
        if not quiet:
            self.progress(f"hop {hop}: the SSH session's slirp queues did not drain; "
                          "stopping anyway")
        if self.plan.kind == "io-error":
            where = halt_disk(guest, point, hop)
            return StopRecord(point, None, where, None, "", time.monotonic() - t0, "io-error")
        assert self.kallsyms is not None
        target = self.kallsyms.resolve(point)
        sock = guest.run_dir / "gdb.sock"
        try:
            guest.qmp.hmp(f"gdbserver unix:{sock},server=on,wait=off")
            stub = GdbStub.connect(sock, Deadline(STUB_SECONDS, f"gdbstub of {guest.name}"),
                                   guest.artifacts / "gdbstub.log")
            self.stub = stub
            self._run_to(stub, point, target, hop, guest)
            for _ in range(point.steps):
                stub.step(Deadline(STUB_SECONDS, f"single-step of {guest.name}"))
            pc = stub.pc(Deadline(STUB_SECONDS, "registers"))
            code = stub.read_memory(pc, 16, Deadline(STUB_SECONDS, "memory at the PC"))
        except BreakpointNotHit as exc:
            raise HopFailure("switch-point-not-reached", hop,
                             f"{point.spec()} ({target:#x}) was not reached in {guest.name}: "
                             f"{exc.message}; the guest may not run that code under this "
                             "load", process=guest.name) from None
        except HarnessError as exc:
            raise HopFailure("switch-point-not-reached", hop,
                             f"stopping {guest.name} at {point.spec()} failed: {exc.message}",
                             process=guest.name) from None
        return StopRecord(point, pc, str(self.kallsyms.locate(pc)), disassemble(code, pc),
                          code.hex(), time.monotonic() - t0)

    def _run_to(self, stub: GdbStub, point: SwitchPoint, target: int, hop: int,
                guest: Guest) -> None:
        deadline = Deadline(BREAK_SECONDS, f"hop {hop}: {guest.name} reaching {point.spec()}")
        hw = guest.plan.accel.name == "kvm"   # an int3 in guest RAM would migrate with it
        stub.insert_breakpoint(target, deadline, hardware=hw)
        for _ in range(point.nth):
            stub.cont(deadline)
        stub.remove_breakpoint(target, deadline, hardware=hw)
        if not point.at_return:
            return
        # At the entry the return address is on top of the stack; the return has
        # happened when the PC is there with the stack pointer above that slot.
        sp = stub.register(RSP, deadline)
        back = int.from_bytes(stub.read_memory(sp, 8, deadline), "little")
        stub.insert_breakpoint(back, deadline, hardware=hw)
        for _ in range(RETURN_TRIES):
            stub.cont(deadline)
            if stub.register(RSP, deadline) == sp + 8:
                break
        else:
            raise BreakpointNotHit(f"{point.symbol} did not return to {back:#x} on the "
                                   f"stack it was called with in {RETURN_TRIES} passes")
        stub.remove_breakpoint(back, deadline, hardware=hw)

    def release(self) -> None:
        """Close the stub's socket without detaching (the source is gone or going)."""
        if self.stub is not None:
            self.stub.close(detach=False)
            self.stub = None
