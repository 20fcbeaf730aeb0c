"""A ping-pong run's failure: which HopFailure an error during the checks stands
for, and what is left for a person to read (failure.txt, dmesg.txt)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, GuestCommandFailed, HarnessError
from harness.guest.running import Guest
from harness.qemu.process import core_dump_policy
from harness.qemu.qmp import QmpTimeout
from harness.scenarios.migration.watch import HopFailure, died, exits_soon, stuck_verdict

__all__ = ["classify_failure", "save_dmesg", "write_post_mortem"]


def classify_failure(exc: HarnessError, hop: int, live: Sequence[Guest],
                     current: Guest | None) -> HopFailure:
    """The HopFailure a harness error during a hop's checks stands for: a dead
    QEMU first (it explains every other symptom), then kernel trouble on a
    console, then a hang or a dead SSH."""
    # A dead QEMU explains every other symptom (SSH EOF, QMP lost): look first,
    # and give the current one a moment (an aborting QEMU is alive while it dumps core).
    for guest in live:
        if guest.process is not None and not guest.process.alive():
            return died(guest, hop, "the checks after the hop", role="process")
    if current is not None and current in live \
            and not isinstance(exc, DeadlineExceeded) and exits_soon(current):
        return died(current, hop, "the checks after the hop", role="process")
    # A guest that oopsed or panicked (oops=panic, panic=-1: it reboots) loses
    # SSH too; the console says why.
    for guest in live:
        trouble = guest.console.trouble() if guest.console is not None else []
        if trouble:
            return HopFailure("guest-trouble", hop,
                              f"the console of {guest.name} shows: {trouble[0].strip()} "
                              f"(then: {exc.message})", tail="\n".join(trouble[-20:]),
                              process=guest.name)
    # QEMU's monitor not answering is QEMU stuck, not the guest (dump-guest-memory
    # and query-pci run during the checks).
    if isinstance(exc, QmpTimeout):
        return HopFailure("qemu-hang", hop, f"{exc.message}: QEMU's monitor, not the guest, "
                          "stopped answering", tail=exc.tail, process=_name(current))
    from harness.guest.ssh import SshUnavailable

    if isinstance(exc, (DeadlineExceeded, SshUnavailable)) and current is not None \
            and current in live:
        # Ask the live QEMU why its guest is silent: a stuck monitor or a VM that
        # is not running is QEMU's doing, whatever the SSH symptom was.
        stuck = stuck_verdict(current, hop, exc.message)
        if stuck is not None:
            return stuck
    if isinstance(exc, DeadlineExceeded):
        return HopFailure("guest-hang", hop, exc.message, tail=exc.tail)
    if isinstance(exc, SshUnavailable):
        return HopFailure("ssh-dead", hop, exc.message, tail=exc.tail)
    if isinstance(exc, GuestCommandFailed):
        # SSH works (the command ran and answered): a check's command failed.
        return HopFailure("guest-command-failed", hop, exc.message, tail=exc.tail)
    # Anything else is not the guest's doing (a command QEMU refused, such as a
    # dump-guest-memory; a lost QMP connection to a live QEMU; a harness bug):
    # named as such, so no known gap of the guest's or QEMU's behaviour takes it.
    return HopFailure("harness-error", hop, f"{type(exc).__name__}: {exc.message}",
                      tail=exc.tail)


def _name(guest: Guest | None) -> str | None:
    return guest.name if guest is not None else None


def write_post_mortem(failure: HopFailure, artifacts: Path, guests: Sequence[Guest],
                      current: Guest | None,
                      amend: Callable[[HopFailure], HopFailure] | None = None) -> HopFailure:
    """failure.txt (the verdict, the failing hop's processes, where the cores are)
    and dmesg.txt while the current guest still runs; `amend` (after dmesg: it may
    stop the guest) may add to the verdict, which is returned."""
    guest = current
    if guest is not None and guest.process is not None and guest.process.alive():
        save_dmesg(guest, artifacts)
        if amend is not None:
            failure = amend(failure)
    involved = guests[-2:]
    cores = [str(core.relative_to(artifacts)) for g in guests
             if g.process is not None for core in g.process.cores()]
    where = (", ".join(cores) if cores
             else f"none written; this system sends them {core_dump_policy()}")
    (artifacts / "failure.txt").write_text(
        failure.describe() + "\n\nprocesses of the failing hop: "
        + ", ".join(f"{g.name}/ (qemu.cmdline, qmp.log, console.log, qemu.stderr)"
                    for g in involved) + f"\ncore dumps: {where}\n")
    return failure


def save_dmesg(guest: Guest, artifacts: Path) -> None:
    """dmesg.txt over the session, or over a new login when the session is gone."""
    try:
        _, dmesg = guest.execute("dmesg", timeout=10)
    except HarnessError:
        try:
            shell = guest.login(Deadline(10, "a login for dmesg", scaled=False))
        except HarnessError:
            return
        try:
            _, dmesg = shell.execute("dmesg", timeout=10)
        except HarnessError:
            return
        finally:
            shell.close()
    (artifacts / "dmesg.txt").write_text(dmesg)
