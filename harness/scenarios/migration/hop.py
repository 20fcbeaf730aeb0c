"""One live-migration hop to a fresh destination process, watching both QEMUs.

Why both: when a destination cannot load the device state (the AHCI bus-master
bug is the example) the *source* still reports `completed`; only the
destination knows, and it says so by exiting with status 1 and a line on its
stderr.  So every wait here looks at both processes first, and a failure is
classified by what actually happened:

- qemu-died                a QEMU was killed by a signal or exited on its own
- migration-failed         the source's query-migrate says failed (QEMU's error text)
- destination-load-failed  the destination exited or did not run after the stream
- ssh-dead                 the destination runs but the guest never answers SSH
- no-convergence           the migration was still sending pages at its deadline: the
                           guest dirties memory faster than the stream drains it

Telling a dead QEMU from a broken SSH session (and the failure kinds
themselves) is harness/scenarios/migration/watch.py; this module re-exports it.

The destination is `Guest.incoming_twin` (same devices, disks and MAC) started
with `-incoming defer`, so anything a scenario changed at run time (hot-plugged
devices) can be replayed on it over QMP before `migrate-incoming`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

__all__ = ["FAILURE_KINDS", "FailureKind", "HopFailure", "HopStats", "Transport", "connect_watching",
           "destination_plan", "died", "exits_soon", "migrate", "new_login_error", "pin_machine",
           "ping_watching", "start_destination"]

from harness.deadline import Deadline
from harness.errors import HarnessError, UserError
from harness.guest.running import Guest, LaunchPlan
from harness.qemu.binary import QemuBinary
from harness.qemu.process import describe_returncode
from harness.scenarios.migration.watch import (
    FAILURE_KINDS,
    FailureKind,
    HopFailure,
    alive,
    connect_watching,
    died,
    exits_soon,
    new_login_error,
    ping_watching,
)

Transport = Literal["unix", "tcp"]
MAX_BANDWIDTH = 10 * 1024**3  # the 128 MiB/s default alone costs ~0.5 s per hop
MIGRATE_SECONDS = 60.0
LOAD_SECONDS = 30.0           # source completed -> destination left "inmigrate"
SSH_SECONDS = 30.0
POLL_S = 0.005


@dataclass(frozen=True)
class HopStats:
    """Where the time of one hop went (seconds unless named otherwise)."""

    hop: int
    source: str
    destination: str
    launch_s: float         # destination spawned -> QMP ready (-incoming defer)
    migrate_s: float        # `migrate` sent -> source says completed
    resume_s: float         # completed -> destination left "inmigrate"
    ssh_s: float            # destination running -> guest answers SSH (new login, or a
                            # round trip on the session that followed it)
    total_s: float          # destination spawned -> guest answers on it
    downtime_ms: float | None
    qemu_total_ms: float | None   # query-migrate total-time
    setup_ms: float | None
    ram_bytes: int | None         # ram.transferred
    destination_status: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def destination_plan(src: Guest, binary: QemuBinary | None) -> LaunchPlan:
    """The source's plan, optionally with another QEMU binary (cross-version hops)."""
    return src.plan if binary is None else replace(src.plan, binary=binary)


def shared_machine(machine: str, src: QemuBinary, dst: QemuBinary) -> str:
    """A versioned machine type both QEMUs have for MACHINE: what it means on the
    source's QEMU ("q35" -> "pc-q35-7.2"), else what it means on the
    destination's (a newer source migrating to an older QEMU: "q35" -> the
    older's pc-q35-7.2, which the newer still offers).

    Cross-version migration needs the same machine type on both sides; the
    alias means the newest type of each binary (pc-q35-7.2 here, pc-q35-10.0
    on QEMU 10), and a stream between those does not load.
    """
    candidates = [src.resolve_machine(machine), dst.resolve_machine(machine)]
    for candidate in candidates:
        if candidate in dst.machines and candidate in src.machines:
            return candidate
    raise UserError(
        f"the destination QEMU {dst.path} ({dst.version}) has no machine type "
        f"{candidates[0]} (what {machine!r} means on the source's QEMU {src.version}), "
        "and the source has none of what it means there, so neither can load the "
        "other's stream",
        fix="use a destination QEMU that still has that machine type, or pass a "
            "versioned machine both QEMUs have with --machine")


def pin_machine(plan: LaunchPlan, dst_binary: QemuBinary) -> LaunchPlan:
    """The plan on a machine type both its QEMU and `dst_binary` have (shared_machine)."""
    topology = plan.topology
    pinned = shared_machine(topology.machine, plan.binary, dst_binary)
    if pinned == topology.machine:
        return plan
    return replace(plan, topology=replace(topology, machine=pinned))


def start_destination(src: Guest, artifacts: Path, name: str, hop: int, *,
                      plan: LaunchPlan | None = None,
                      prepare: Callable[[Guest], None] | None = None) -> Guest:
    """Spawn the destination with `-incoming defer`; `prepare(dst)` runs before the stream.

    The returned Guest is started; the caller owns it (shutdown) whatever happens next.
    On a start-up failure the destination is already shut down and HopFailure raised.
    """
    dst = src.incoming_twin(artifacts, name, plan)
    try:
        dst.launch(incoming="defer")
    except HarnessError as exc:
        raise HopFailure("qemu-died", hop, f"destination {name} did not start: {exc.message}",
                         tail=exc.tail, process=name) from None
    if prepare is not None:
        prepare(dst)
    return dst


def _dst_failure(src: Guest, dst: Guest, hop: int, src_status: str | None) -> HopFailure:
    """The destination exited: a signal is a death, an exit status a failed load."""
    assert dst.process is not None
    dst.process.wait(Deadline(2, "destination exit", scaled=False))
    err = dst.process.exited_error("incoming migration")
    rc = dst.process.returncode
    stderr = err.stderr.strip()
    # QEMU's reason (e.g. "AHCI: Failed to start FIS receive engine") comes a few
    # lines before its generic "load of migration failed": keep the last few.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = " / ".join(lines[-4:]) if lines else "(nothing on stderr)"
    if rc is not None and rc < 0:
        return HopFailure("qemu-died", hop, f"destination {dst.name}: {err.message}",
                          tail=stderr[-3000:] or None, process=dst.name)
    seen = f"; the source said {src_status}" if src_status else ""
    return HopFailure("destination-load-failed", hop,
                      f"destination {dst.name} {describe_returncode(rc)} while loading the migration "
                      f"stream{seen}: {last}", tail=stderr[-3000:] or None, process=dst.name)


def _qmp(guest: Guest, command: str, args: dict[str, Any] | None = None) -> Any:
    assert guest.qmp is not None
    return guest.qmp.execute(command, args)


def _incoming_uri(dst: Guest, transport: Transport) -> str:
    if transport == "unix":
        uri = f"unix:{dst.run_dir / 'mig.sock'}"
        _qmp(dst, "migrate-incoming", {"uri": uri})
        return uri
    _qmp(dst, "migrate-incoming", {"uri": "tcp:127.0.0.1:0"})  # QEMU picks a free port
    info = _qmp(dst, "query-migrate")
    for addr in info.get("socket-address", []):
        if addr.get("type") == "inet":
            return f"tcp:{addr['host']}:{addr['port']}"
    raise HarnessError("the destination listens, but query-migrate shows no inet "
                       "socket-address", tail=repr(info))


def migrate(src: Guest, dst: Guest, hop: int, *, transport: Transport = "unix",
            launch_started: float | None = None, connect: bool | None = None,
            wrap_uri: Callable[[str], str] | None = None,
            before_resume: Callable[[Guest], None] | None = None,
            resume: bool = False) -> HopStats:
    """Stream `src` into the started destination `dst` and wait until it runs.

    connect: open SSH on the destination (default: when the source was running;
    a stopped VM, e.g. halted on an I/O error, stays stopped on the destination).
    wrap_uri: gives the URI the source migrates to instead of the destination's
    own (a relay that keeps the stream); before_resume: called once the
    destination (started with -S) has loaded, before the harness sends `cont`.
    resume: the source is stopped on purpose (a switch point: gdbstub `debug`, a
    halted request's `io-error`) and the destination must run on from there: it
    gets `cont` after loading, as a running source's would, and SSH is checked.
    """
    started = launch_started if launch_started is not None else time.monotonic()
    launch_s = time.monotonic() - started if launch_started is not None else 0.0
    try:
        was_running = bool(_qmp(src, "query-status")["running"])
        uri = _incoming_uri(dst, transport)
        if wrap_uri is not None:
            uri = wrap_uri(uri)
        _qmp(src, "migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        t_migrate = time.monotonic()
        _qmp(src, "migrate", {"uri": uri})
    except HarnessError:
        if not alive(dst):
            raise _dst_failure(src, dst, hop, None) from None
        if not alive(src):
            raise died(src, hop, "migration start") from None
        raise
    info = _wait_completed(src, dst, hop, Deadline(MIGRATE_SECONDS, f"hop {hop} migration"))
    t_done = time.monotonic()
    session = src.shell if src.shell is not None and src.shell.migrates else None
    if session is not None:
        # The source has stopped: the guest's SSH connection is in the stream,
        # its host end is now the destination's guestfwd connection.
        if dst.hop_sock is None:
            raise HarnessError(f"destination {dst.name} has no guestfwd connection for the "
                               "migrating SSH session (launch it with migrating_ssh=True)")
        session.follow(dst.hop_sock, dst.artifacts / "ssh.log", dst.name)
        dst.hop_sock, src.shell, dst.shell = None, None, session
    status = _wait_loaded(src, dst, hop, Deadline(LOAD_SECONDS, f"hop {hop} destination load"))
    run_on = was_running or resume
    if run_on and (before_resume is not None or (resume and status != "running")):
        if before_resume is not None:
            before_resume(dst)
        _qmp(dst, "cont")
        status = str(_qmp(dst, "query-status")["status"])
    t_loaded = time.monotonic()
    if run_on and status != "running":
        why = "the source was running" if was_running else "the destination was resumed"
        raise HopFailure("destination-load-failed", hop,
                         f"{why} but destination {dst.name} is "
                         f"{status!r} after the stream", process=dst.name)
    if connect if connect is not None else run_on:
        if session is not None:
            ping_watching(dst, hop, Deadline(SSH_SECONDS, f"hop {hop} SSH answer from "
                                                          f"{dst.name}"))
        else:
            connect_watching(dst, hop, Deadline(SSH_SECONDS, f"hop {hop} SSH to {dst.name}"))
    t_ssh = time.monotonic()
    ram = info.get("ram") or {}
    return HopStats(hop=hop, source=src.name, destination=dst.name, launch_s=launch_s,
                    migrate_s=t_done - t_migrate, resume_s=t_loaded - t_done,
                    ssh_s=t_ssh - t_loaded, total_s=t_ssh - started,
                    downtime_ms=_num(info.get("downtime")),
                    qemu_total_ms=_num(info.get("total-time")),
                    setup_ms=_num(info.get("setup-time")),
                    ram_bytes=ram.get("transferred"), destination_status=status)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _wait_completed(src: Guest, dst: Guest, hop: int, deadline: Deadline) -> dict[str, Any]:
    """Poll the source's query-migrate, checking both processes on every round."""
    while True:
        if not alive(dst):
            raise _dst_failure(src, dst, hop, _status_or_none(src))
        if not alive(src):
            raise died(src, hop, f"migration to {dst.name}")
        try:
            info: dict[str, Any] = _qmp(src, "query-migrate")
        except HarnessError:
            if not alive(src) or (src.process and src.process.wait(
                    Deadline(1, "source exit", scaled=False)) is not None):
                raise died(src, hop, f"migration to {dst.name}") from None
            raise
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            # The destination's own words beat the source's "socket closed".
            if dst.process is not None and dst.process.wait(
                    Deadline(1, "destination exit", scaled=False)) is not None:
                raise _dst_failure(src, dst, hop, status)
            raise HopFailure("migration-failed", hop,
                             f"the source says {status}: "
                             f"{info.get('error-desc', 'no error-desc')}", process=src.name)
        if deadline.expired():
            ram = info.get("ram", {})
            if status == "active":
                raise HopFailure("no-convergence", hop,
                                 f"{deadline.describe()}: still sending after "
                                 f"{ram.get('transferred', 0) / 1e6:.0f} MB; the guest "
                                 f"dirties {ram.get('dirty-pages-rate', '?')} pages/s and "
                                 f"{ram.get('remaining', 0) / 1e6:.0f} MB remain "
                                 f"(iteration {ram.get('dirty-sync-count', '?')}): lower the "
                                 "guest's dirty rate (--memory-rate)", process=src.name)
            raise HopFailure("migration-failed", hop,
                             f"{deadline.describe()} (status {status!r}, "
                             f"ram {ram.get('transferred')} bytes sent)",
                             process=src.name)
        time.sleep(POLL_S)


def _status_or_none(guest: Guest) -> str | None:
    try:
        return str(_qmp(guest, "query-migrate").get("status"))
    except HarnessError:
        return None


def _wait_loaded(src: Guest, dst: Guest, hop: int, deadline: Deadline) -> str:
    """Poll the destination until it leaves "inmigrate"; its exit is a failed load."""
    while True:
        if not alive(dst):
            raise _dst_failure(src, dst, hop, "completed")
        try:
            status = str(_qmp(dst, "query-status")["status"])
        except HarnessError:
            raise _dst_failure(src, dst, hop, "completed") from None
        if status != "inmigrate":
            return status
        if deadline.expired():
            raise HopFailure("destination-load-failed", hop,
                             f"{deadline.describe()}: destination {dst.name} is still "
                             "'inmigrate' although the source completed", process=dst.name)
        time.sleep(POLL_S)
