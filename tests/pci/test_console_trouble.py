"""The console scan sees kernel trouble printed at warning and error level.

Every console check (compare, ping-pong's hop check, the hotplug tests) reads
`Console.trouble()`.  It can only name what reaches the serial console, so a
real guest is fed the kinds of lines a real failure prints, at the level the
kernel prints them, and the scan must name each one:

- an I/O error at error level (3), as blk_update_request prints it;
- a general protection fault header at the default level (4), as the oops
  code prints it;
- a real user-space GPF (a program jumping to a non-canonical address): the
  kernel reports it at info level only, the guest forwards it from /dev/kmsg.
"""

from __future__ import annotations

import re
import struct
import time

import pytest

from harness.deadline import Deadline

pytestmark = pytest.mark.smoke

IO_ERROR = "blk_update_request: I/O error, dev vdz, sector 2048 op 0x1:(WRITE) flags 0x800"
GPF = ("general protection fault, probably for non-canonical address 0xdead000000000100: "
       "0000 [#1] PREEMPT SMP NOPTI")


def gpf_program() -> bytes:
    """A 132-byte static x86-64 ELF whose only instructions are
    `movabs rax, 0x8000000000000000; jmp rax`: the jump to a non-canonical
    address raises #GP, which the kernel reports as "traps: NAME[PID] general
    protection fault ip:... in NAME[...]" and kills the process."""
    code = bytes.fromhex("48b8" "0000000000000080" "ffe0")
    size = 64 + 56 + len(code)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 0x3E, 1, 0x400000 + 120, 64, 0, 0,
                         64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, size, size, 0x1000)
    return header + segment + code


def _octal(data: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in data)


def test_console_scan_names_kernel_errors_and_faults(guest) -> None:
    assert guest.console is not None
    assert guest.console.trouble() == [], "the guest's console shows trouble before the test"
    guest.succeed(f"echo '<3>{IO_ERROR}' > /dev/kmsg; echo '<4>{GPF}' > /dev/kmsg")
    guest.succeed(f"printf '{_octal(gpf_program())}' > /tmp/gpf && chmod +x /tmp/gpf")
    out = guest.succeed("/tmp/gpf; echo status=$?")
    assert "status=139" in out, f"the GPF program did not die of SIGSEGV: {out!r}"

    wanted = {"I/O error": IO_ERROR, "general protection fault": GPF,
              "user GPF": "gpf["}
    deadline = Deadline(20, "the kernel's lines on the serial console")
    while True:
        trouble = guest.console.trouble()
        missing = [kind for kind, text in wanted.items()
                   if not any(text in line for line in trouble)]
        if not missing or deadline.expired():
            break
        time.sleep(0.2)
    assert not missing, (f"the console scan did not name {missing}; it found {trouble}; "
                         f"console tail:\n{guest.console.tail()}")
    assert "I/O error: " in next(t for t in trouble if IO_ERROR in t), trouble
    assert next(t for t in trouble if GPF in t).startswith("general protection fault: "), trouble
    # Re-logged by the guest's forwarder at warning level, so the kernel prints it
    # with its timestamp; the ip is where gpf_program() jumps.
    user = next(t for t in trouble if "gpf[" in t)
    assert re.match(r"general protection fault: \[ *[\d.]+\] kmsg: traps: gpf\[\d+\] "
                    r"general protection fault ip:8000000000000000 ", user), user


def test_console_log_keeps_long_output_nobody_waits_for(guest) -> None:
    """A long oops must reach console.log although no test reads the console.

    QEMU's UART writes one byte per write() and logs only what the socket took;
    an undrained socket stalls the guest's serial output after ~280 bytes, so
    without the harness's drain thread the last of these lines never arrives."""
    assert guest.console is not None
    lines = 120
    guest.succeed(f"for i in $(seq 1 {lines}); do "
                  "echo \"<4>harness-drain line $i of the console drain check\" >/dev/kmsg; done")
    last = f"harness-drain line {lines} of the console drain check"
    deadline = Deadline(20, "the last drain line in console.log")
    while last not in guest.console.log_path.read_text(errors="replace"):
        assert not deadline.expired(), (
            f"console.log never got {last!r}; its tail:\n{guest.console.tail(5)}")
        time.sleep(0.2)
    text = guest.console.log_path.read_text(errors="replace")
    numbers = [int(m) for m in re.findall(r"harness-drain line (\d+) of", text)]
    assert numbers == list(range(1, lines + 1)), f"lines missing or out of order: {numbers}"
