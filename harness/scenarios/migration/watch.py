"""What broke in a migration hop: the failure kinds, a QEMU that died (its
status and stderr), and SSH exchanges run while the process and the console are
watched, so a dead QEMU or a kernel oops is named at once instead of showing up
as an SSH timeout.  A guest that stops answering SSH on a live QEMU is asked
why (`stuck_verdict`): QEMU's monitor silent (qemu-hang), the VM not running
(vm-stopped), or the guest silent on its serial console too (guest-hang).  A
broken session is told from a dead guest by a new login.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Literal

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.guest.running import Guest

__all__ = ["EXIT_GRACE_S", "FAILURE_KINDS", "LOGIN_CHECK_SECONDS", "FailureKind", "HopFailure",
           "alive", "connect_watching", "died", "exits_soon", "new_login_error",
           "ping_watching"]

FailureKind = Literal["qemu-died", "migration-failed", "destination-load-failed",
                      "guest-trouble", "guest-hang", "ssh-dead", "data-mismatch", "data-lost",
                      "pci-state-changed", "load-stalled", "no-convergence",
                      "lost-dirty-pages", "switch-point-not-reached", "qemu-hang",
                      "vm-stopped", "guest-command-failed", "harness-error"]
FAILURE_KINDS: tuple[str, ...] = FailureKind.__args__  # type: ignore[attr-defined]
LOGIN_CHECK_SECONDS = 10.0    # the new login that tells a broken session from a dead guest
EXIT_GRACE_S = 5.0            # a broken connection: time for a dying QEMU to finish dying
RUNSTATE_SECONDS = 5.0        # query-status on a live QEMU: its monitor answers in ms
CONSOLE_PROBE_SECONDS = 10.0  # an echo on the serial console's shell (TCG, loaded host)
_PROBES = itertools.count(1)


class HopFailure(HarnessError):
    """A hop (or the checks after it) failed; `kind` is one of FAILURE_KINDS."""

    def __init__(self, kind: FailureKind, hop: int, message: str, *, tail: str | None = None,
                 process: str | None = None):
        super().__init__(f"hop {hop}: {kind}: {message}", tail=tail)
        self.kind = kind
        self.hop = hop
        self.detail = message
        self.process = process  # the process (guest name) the failure is about

    def add(self, words: str) -> None:
        """Say more about the failure (e.g. where a switch point stopped the source);
        in place, so the traceback of where it failed stays."""
        self.detail = f"{self.detail}; {words}"
        self.message = f"hop {self.hop}: {self.kind}: {self.detail}"
        self.args = (self.message,)


def died(guest: Guest, hop: int, during: str, role: str = "source") -> HopFailure:
    """HopFailure("qemu-died") for a process that is gone, with its status and stderr."""
    assert guest.process is not None
    guest.process.wait(Deadline(2, f"{role} exit", scaled=False))
    err = guest.process.exited_error(during)
    return HopFailure("qemu-died", hop, f"{role} {guest.name}: {err.message}",
                      tail=err.stderr[-3000:] or None, process=guest.name)


def alive(guest: Guest) -> bool:
    """The guest's QEMU process is running."""
    return guest.process is not None and guest.process.alive()


def connect_watching(guest: Guest, hop: int, deadline: Deadline) -> None:
    """Open a new SSH session to `guest` while watching the process and the console."""
    _watching(guest, hop, deadline,
              lambda: guest.connect(Deadline(max(deadline.remaining(), 0.1),
                                             f"SSH to {guest.name}", scaled=False)),
              "does not answer SSH")


def ping_watching(guest: Guest, hop: int, deadline: Deadline) -> None:
    """One round trip on the SSH session that followed the guest to `guest`."""
    assert guest.shell is not None
    shell = guest.shell
    _watching(guest, hop, deadline,
              lambda: shell.ping(Deadline(max(deadline.remaining(), 0.1),
                                          f"SSH answer from {guest.name}", scaled=False)),
              "does not answer on its SSH session (it was open before the hop)",
              diagnose=lambda: _new_login_verdict(guest, shell.ledger()))


def new_login_error(guest: Guest, seconds: float) -> str | None:
    """None when a new SSH login through the host forward runs a command, else why not."""
    try:
        shell = guest.login(Deadline(seconds, f"a new SSH login to {guest.name}"))
    except HarnessError as exc:
        return exc.message
    try:
        shell.succeed("true", timeout=seconds)
    except HarnessError as exc:
        return f"it connects but cannot run a command: {exc.message}"
    finally:
        shell.close()
    return None


def _new_login_verdict(guest: Guest, ledger: str | None = None) -> str:
    """After the followed session broke: does a new login work?  Yes points at the
    migrated TCP connection (slirp's guestfwd state), no at the guest.  The
    session's bytes per QEMU (`ledger`) show whether any went to a source after its
    stop or came from two QEMUs."""
    error = new_login_error(guest, LOGIN_CHECK_SECONDS)
    bytes_moved = f" (session bytes: {ledger})" if ledger else ""
    if error is not None:
        return f"a new SSH login fails too: {error}{bytes_moved}"
    return ("a new SSH login works, so the session's migrated TCP connection "
            f"(slirp guestfwd state) is what broke{bytes_moved}")


def _watching(guest: Guest, hop: int, deadline: Deadline, action: Callable[[], Any],
              failing: str, diagnose: Callable[[], str] | None = None) -> None:
    """Run `action` (an SSH exchange) while watching the process and the console.

    The action runs in a helper thread because paramiko's handshake has no
    deadline of its own: a guest that hangs after accepting the TCP connection
    (a kernel oops mid-handshake) would block it for good.  This thread names a
    dead QEMU or a console oops at once; a stuck helper ends when QEMU is shut
    down and its socket closes.
    """
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            action()
            outcome["done"] = None
        except Exception as exc:  # noqa: BLE001 -- re-raised by the watching thread
            outcome["done"] = exc

    helper = threading.Thread(target=attempt, name=f"ssh-{guest.name}", daemon=True)
    helper.start()
    while "done" not in outcome:
        helper.join(0.05)
        if "done" in outcome:
            break
        if not alive(guest):
            raise died(guest, hop, "SSH", "destination")
        trouble = guest.console.trouble() if guest.console is not None else []
        if trouble:
            raise HopFailure("guest-trouble", hop, f"the console of {guest.name} shows: "
                             f"{trouble[0].strip()}", tail="\n".join(trouble[-20:]),
                             process=guest.name)
        if deadline.expired() and helper.is_alive():
            break
    error = outcome.get("done")
    if "done" in outcome and error is None:
        return
    if not alive(guest) or ("done" in outcome and exits_soon(guest)):
        raise died(guest, hop, "SSH", "destination")
    reason = error.message if isinstance(error, HarnessError) else repr(error)
    when = f"{deadline.describe()}: " if "done" not in outcome else ""
    stuck = stuck_verdict(guest, hop, f"{when}{guest.name} {failing} "
                                      f"({reason if error else 'no answer'})")
    if stuck is not None:
        raise stuck
    verdict = f"; {diagnose()}" if diagnose is not None else ""
    raise HopFailure("ssh-dead", hop, f"{when}the guest on {guest.name} is "
                     f"running but {failing} ({reason if error else 'no answer'}){verdict}",
                     tail=guest.console.tail() if guest.console else None, process=guest.name)


def stuck_verdict(guest: Guest, hop: int, symptom: str) -> HopFailure | None:
    """Why the guest of a live QEMU does not answer (SYMPTOM says how it showed):
    QEMU's monitor silent too ("qemu-hang"), the VM not running ("vm-stopped":
    paused, io-error, postmigrate ...), or the VM running and the guest silent on
    its serial console as well ("guest-hang").  None when the console answers:
    the guest runs and SSH itself is what broke (the caller says ssh-dead)."""
    if guest.qmp is None:
        return None
    from harness.qemu.qmp import QmpTimeout

    try:
        status = guest.qmp.execute("query-status", timeout=RUNSTATE_SECONDS)
    except QmpTimeout:
        return HopFailure("qemu-hang", hop, f"{symptom}; QEMU's monitor does not answer "
                          f"query-status within {RUNSTATE_SECONDS:g} s either: QEMU, not the "
                          "guest, is stuck", process=guest.name)
    except HarnessError:
        return None  # a lost monitor: the caller's own verdict (a dying QEMU is seen there)
    if not status.get("running", True):
        return HopFailure("vm-stopped", hop, f"{symptom}; QEMU reports the VM "
                          f"{status.get('status')!r}, not running: the guest executes "
                          "nothing", process=guest.name)
    if guest.console is None or console_answers(guest):
        return None
    return HopFailure("guest-hang", hop, f"{symptom}; the VM runs, but the guest does not "
                      f"answer on its serial console either (an echo, {CONSOLE_PROBE_SECONDS:g} "
                      "s)", tail=guest.console.tail(), process=guest.name)


def console_answers(guest: Guest) -> bool:
    """Whether the serial console's shell echoes a marker back in time."""
    assert guest.console is not None
    # A new number per probe: a late answer to an earlier probe is no answer to this
    # one; the arithmetic keeps the terminal's echo of the command from matching.
    marker = f"PCIH-ALIVE-{next(_PROBES)}-42"
    guest.console.send_line(f"echo {marker[:-3]}-$((40+2))")
    try:
        guest.console.expect(marker, Deadline(CONSOLE_PROBE_SECONDS, "a console echo"))
    except HarnessError:
        return False
    return True


def exits_soon(guest: Guest, seconds: float = EXIT_GRACE_S) -> bool:
    """Whether a QEMU that still looks alive exits within `seconds`.

    A connection that breaks at once usually means QEMU is going away: a
    process that aborts is still alive while the kernel writes its core, so
    "alive" alone would blame SSH for a crash.
    """
    return guest.process is not None and guest.process.wait(
        Deadline(seconds, f"{guest.name} exit", scaled=False)) is not None
