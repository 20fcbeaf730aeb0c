"""Ping-pong migration under disk load: hop after hop to a fresh QEMU, checked every hop.

After every hop the destination must run, the guest must answer SSH (on the
session opened at boot, which follows the guest from process to process:
slirp migrates its TCP connection), neither
console may show kernel trouble, the PCI state (QEMU view and guest view) must
equal the state before the hop, and every disk load must still make progress
with no bad re-read.  At the end the loads stop, every written block is
read back and compared with the host's own checksum of the pattern, and a
new SSH login to the last process must work.

The run stops at the first failure and leaves in its artifact directory one
sub-directory per QEMU process (g00 booted, gNN the destination of hop NN:
command line, QMP transcript, console log, stderr, a per-process
reproduce.sh), `hops.jsonl`, `failure.txt`, `dmesg.txt` when the guest still
answers, and the top-level `reproduce.sh` the caller supplies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness import views
from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError
from harness.machine import Guest, LaunchPlan
from harness.qemu.binary import QemuBinary
from harness.qemu.process import core_dump_policy
from harness.scenarios.loads import (
    DataMismatch,
    DiskLoad,
    LoadMode,
    LoadPlan,
    LoadState,
    find_disk,
    parse_states,
)
from harness.scenarios.migration import (
    HopFailure,
    HopStats,
    Transport,
    destination_plan,
    died,
    exits_soon,
    migrate,
    new_login_error,
    pin_machine,
    start_destination,
)
from harness.topology import Topology
from harness.topology.drivers import BUILTIN
from harness.views.pciview import PciView
from harness.views.threeview import ThreeViews, changes, snapshot

LoadKind = Literal["write", "mixed", "none"]
# Freed guest pages are zeroed, so migration sends them as zero pages: an idle
# 512 MiB guest sends ~86 MB instead of ~109 MB (measured, QEMU 7.2, TCG).
KERNEL_ARGS = ("init_on_free=1",)
PROGRESS_SECONDS = 20.0   # the load must write one more block within this after a hop
STOP_SECONDS = 30.0
SESSION_SECONDS = 30.0
Progress = Callable[[str], None]
QmpCommand = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class DiskTarget:
    """A disk to load: the topology device that owns it (None: q35's built-in AHCI)."""

    name: str
    device_id: str | None
    size: int


def disk_targets(topology: Topology, kinds: Sequence[str]) -> tuple[DiskTarget, ...]:
    """The topology's disks of the given kinds ("ahci", "virtio-blk")."""
    out: list[DiskTarget] = []
    if "ahci" in kinds and topology.ahci_disk is not None:
        out.append(DiskTarget("ahci", None, topology.ahci_disk))
    for dev in topology.devices:
        if dev.disk is None:
            continue
        if (dev.driver == "ich9-ahci" and "ahci" in kinds) or \
                (dev.driver == "virtio-blk-pci" and "virtio-blk" in kinds):
            out.append(DiskTarget(dev.id, dev.id, dev.disk))
    return tuple(out)


def builtin_path(topology: Topology, driver: str) -> tuple[str, ...]:
    """The root-bus path of a machine's built-in function (q35's AHCI is 1f.2)."""
    for (slot, fn), info in BUILTIN[topology.kind].items():
        if info.driver == driver:
            return (f"{slot:02x}.{fn}",)
    raise HarnessError(f"{topology.machine} has no built-in {driver}")


@dataclass(frozen=True)
class PingPongOptions:
    hops: int                      # hops to run; with until_fail the upper limit
    seed: int
    load: LoadKind = "write"
    transport: Transport = "unix"
    disks: tuple[DiskTarget, ...] = ()
    dst_binary: QemuBinary | None = None   # odd hops run on it, even hops come back
    until_fail: bool = False
    max_time_s: float | None = None
    reproduce: tuple[str, ...] = ()        # argv that replays this run (reproduce.sh)


@dataclass
class HopRecord:
    stats: HopStats
    check_s: float
    loads: dict[str, LoadState]

    def as_dict(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "check_s": self.check_s,
                "loads": {k: v.__dict__ for k, v in self.loads.items()}}


@dataclass
class PingPongResult:
    ok: bool
    records: list[HopRecord]
    failure: HopFailure | None
    artifacts: Path
    verified_blocks: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    boot_s: float = 0.0
    login_s: float | None = None   # the new SSH login to the last process, at the end
    notes: list[str] = field(default_factory=list)  # e.g. how two QEMU versions differ


def _loads_state(guest: Guest, loads: Sequence[DiskLoad]) -> dict[str, LoadState]:
    if not loads:
        return {}
    return parse_states(guest.succeed("\n".join(load.state_command() for load in loads)))


class PingPong:
    """One run.  `run()` never raises for a failed hop: it returns the verdict."""

    def __init__(self, plan: LaunchPlan, artifacts: Path, options: PingPongOptions,
                 progress: Progress | None = None):
        self.plan = replace(plan, kernel_args=tuple(dict.fromkeys(plan.kernel_args + KERNEL_ARGS)),
                            migrating_ssh=True)
        if options.dst_binary is not None:
            self.plan = pin_machine(self.plan, options.dst_binary)
        self.artifacts = artifacts
        self.options = options
        self.progress = progress or (lambda message: None)
        self.guests: list[Guest] = []        # every process started (shut down at the end)
        self.live: list[Guest] = []          # those not deliberately shut down yet
        self.current: Guest | None = None
        self.loads: list[DiskLoad] = []
        self.replay: list[QmpCommand] = []   # hot-plug commands every destination repeats
        self._ref: ThreeViews | None = None
        # The QEMU view of the reference state as each QEMU binary reports it
        # (cross-version runs: two binaries may describe one state differently).
        self._qemu_refs: dict[str, PciView] = {}
        self.qemu_view_notes: list[str] = []
        self._states: dict[str, LoadState] = {}
        self._hop = 0
        self._next: tuple[Guest, float] | None = None  # pre-spawned destination, its launch_s

    # ---- set-up ----------------------------------------------------------
    def boot(self) -> Guest:
        guest = Guest(self.plan, self.artifacts / "g00", name="g00")
        self.guests.append(guest)
        self.live.append(guest)
        guest.launch()
        # Every hop is checked over this one session: slirp migrates its TCP
        # connection, so "the guest answers SSH" costs a round trip, not a new
        # login on a destination whose code TCG has not translated yet.
        guest.open_migrating_session(Deadline(SESSION_SECONDS, "the migrating SSH session"))
        self.current = guest
        if self.options.load != "none":
            self._start_loads(guest)
        self.refresh_reference()
        return guest

    def _start_loads(self, guest: Guest) -> None:
        assert guest.qmp is not None
        qemu = views.collect_qemu_view(guest.qmp, guest.root_bus_hotplug())
        topology: Topology = self.plan.topology
        mode: LoadMode = "mixed" if self.options.load == "mixed" else "write"
        for target in self.options.disks:
            if target.device_id is None:
                path = builtin_path(topology, "ich9-ahci")
            else:
                path = qemu.function(target.device_id).path
            device = find_disk(guest, path, f"disk {target.name}")
            load = DiskLoad(LoadPlan.from_seed(target.name, self.options.seed, target.size),
                            device, mode)
            load.start(guest)
            load.wait_started(guest, Deadline(PROGRESS_SECONDS, f"start of the load on "
                                                                f"{target.name}"))
            self.loads.append(load)
            self.progress(f"load {mode} on {target.name} ({device}, {load.plan.blocks} blocks)")

    def refresh_reference(self) -> None:
        """Take the current PCI views as what every later hop must preserve
        (call it again after a deliberate change such as a hot-plug)."""
        assert self.current is not None
        self._ref = snapshot(self.current, lspci=False)
        self._qemu_refs = {str(self.current.plan.binary.path): self._ref.qemu}
        self._states = _loads_state(self.current, self.loads)

    def hotplug(self, commands: Sequence[QmpCommand]) -> None:
        """Run QMP commands on the current guest and on every later destination
        (before its stream), so the device set keeps matching across hops."""
        assert self.current is not None and self.current.qmp is not None
        if self._next is not None:  # spawned before this change: it would not match
            self.live.remove(self._next[0])
            self._next[0].shutdown()
            self._next = None
        for command, args in commands:
            self.current.qmp.execute(command, args)
        self.replay.extend(commands)

    # ---- hops ------------------------------------------------------------
    def _prepare(self, dst: Guest) -> None:
        assert dst.qmp is not None
        for command, args in self.replay:
            dst.qmp.execute(command, args)

    def hop(self) -> HopRecord:
        """Migrate the current guest to a fresh process and check it."""
        assert self.current is not None
        self._hop += 1
        number = self._hop
        src = self.current
        if self._next is None:
            self._spawn(number)
        assert self._next is not None
        dst, launch_s = self._next
        self._next = None
        stats = replace(migrate(src, dst, number, transport=self.options.transport),
                        launch_s=launch_s)
        self.current = dst
        if number < self.options.hops:
            # The next destination starts while this hop is checked: its ~0.1 s
            # start-up leaves the hop's critical path.
            self._spawn(number + 1)
        self.live.remove(src)
        rc = src.shutdown()
        if rc not in (0, None):
            raise died(src, number, "quit after a completed migration")
        t0 = time.monotonic()
        states = self.check(number, src)
        record = HopRecord(stats, time.monotonic() - t0, states)
        with open(self.artifacts / "hops.jsonl", "a") as out:
            out.write(json.dumps(record.as_dict(), default=str) + "\n")
        return record

    def _spawn(self, number: int) -> None:
        assert self.current is not None
        binary = self.options.dst_binary if number % 2 == 1 else None
        plan = destination_plan(self.current, binary) if binary else self.plan
        name = f"g{number:02d}"
        started = time.monotonic()
        dst = start_destination(self.current, self.artifacts / name, name, number, plan=plan,
                                prepare=self._prepare if self.replay else None)
        self.guests.append(dst)
        self.live.append(dst)
        self._next = (dst, time.monotonic() - started)

    def check(self, number: int, src: Guest) -> dict[str, LoadState]:
        """Console, PCI views and load progress after hop `number`."""
        dst = self.current
        assert dst is not None and dst.console is not None and self._ref is not None
        self._console_check(number, src, dst)
        after = snapshot(dst, lspci=False)
        # Nothing may change across a hop: BAR addresses, bus numbers, windows,
        # link state, bound drivers and hotplug handlers are all device state
        # that migration carries (none of the compared fields is volatile), so
        # no field is ignored.  The guest view is compared with the one
        # reference; the QEMU view with what the same QEMU binary said before,
        # because another QEMU version may describe the same machine in other
        # words (its QOM hotplug handlers): the first hop onto a binary records
        # how, as a note, and every later hop onto it must match.
        binary = str(dst.plan.binary.path)
        qemu_ref = self._qemu_refs.get(binary)
        if qemu_ref is None:
            self._note_qemu_view(number, dst, changes(self._ref, after).qemu)
            self._qemu_refs[binary] = qemu_ref = after.qemu
        diff = changes(replace(self._ref, qemu=qemu_ref), after)
        if diff:
            raise HopFailure("pci-state-changed", number,
                             "the PCI state changed across the hop: "
                             + "; ".join(f"{view} view: {c}" for view, c in diff.all()[:8]),
                             process=dst.name)
        states = _loads_state(dst, self.loads)
        states = self._wait_progress(number, dst, states)
        self._console_check(number, src, dst)
        self._states = states
        return states

    def _note_qemu_view(self, number: int, dst: Guest, differences: Sequence[Any]) -> None:
        if not differences:
            return
        first = self.plan.binary
        note = (f"QEMU {dst.plan.binary.version} ({dst.name}, hop {number}) reports the "
                f"migrated machine ({self.plan.topology.machine}) differently from QEMU "
                f"{first.version}: " + "; ".join(str(c) for c in differences[:8]))
        self.qemu_view_notes.append(note)
        self.progress(note)

    def _console_check(self, number: int, src: Guest, dst: Guest) -> None:
        for guest in (src, dst):
            if guest.console is None:
                continue
            trouble = guest.console.trouble()
            if trouble:
                raise HopFailure("guest-trouble", number,
                                 f"the console of {guest.name} shows: {trouble[0].strip()}",
                                 tail="\n".join(trouble[-20:]), process=guest.name)

    def _wait_progress(self, number: int, dst: Guest,
                       states: dict[str, LoadState]) -> dict[str, LoadState]:
        deadline = Deadline(PROGRESS_SECONDS, f"load progress after hop {number}")
        for load in self.loads:
            name = load.plan.name
            before = self._states.get(name)
            while True:
                state = states[name]
                try:
                    load.check(state)
                except DataMismatch as exc:
                    raise HopFailure("data-mismatch", number, exc.message,
                                     process=dst.name) from None
                if before is None or state.written > before.written:
                    break
                if deadline.expired():
                    raise HopFailure("load-stalled", number,
                                     f"{deadline.describe()}: the load on {name} "
                                     f"({load.device}) is stuck at {state.written} writes",
                                     tail=dst.console.tail() if dst.console else None,
                                     process=dst.name)
                time.sleep(0.05)
                states = {**states, name: load.state(dst)}
        return states

    # ---- the whole run -----------------------------------------------------
    def run(self) -> PingPongResult:
        result = PingPongResult(ok=False, records=[], failure=None, artifacts=self.artifacts)
        started = time.monotonic()
        try:
            if self.options.dst_binary is not None:
                self.progress(f"cross-version: odd hops run on QEMU "
                              f"{self.options.dst_binary.version} "
                              f"({self.options.dst_binary.path}), even hops on "
                              f"{self.plan.binary.version}; machine "
                              f"{self.plan.topology.machine}")
            t0 = time.monotonic()
            self.boot()
            result.boot_s = time.monotonic() - t0
            self.progress(f"booted g00 in {result.boot_s:.1f} s, seed {self.options.seed}")
            while self._hop < self.options.hops:
                if self.options.max_time_s is not None and \
                        time.monotonic() - started >= self.options.max_time_s:
                    self.progress(f"--max-time reached after {self._hop} hops")
                    break
                record = self.guarded(self.hop)
                result.records.append(record)
                self._show(record)
            self.guarded(lambda: self._finish(result))
            result.ok = True
        except HopFailure as failure:
            result.failure = failure
            self._post_mortem(failure)
        finally:
            for guest in self.guests:
                guest.shutdown()
            result.notes = list(self.qemu_view_notes)
        return result

    def _finish(self, result: PingPongResult) -> None:
        assert self.current is not None
        for load in self.loads:
            state = load.stop(self.current, Deadline(STOP_SECONDS, f"stopping {load.plan.name}"))
            try:
                load.check(state)
                result.verified_blocks[load.plan.name] = load.verify_all(self.current,
                                                                         state.written)
            except DataMismatch as exc:
                raise HopFailure("data-mismatch", self._hop, exc.message, tail=exc.tail,
                                 process=self.current.name) from None
            result.writes[load.plan.name] = state.written
            self.progress(f"{load.plan.name}: {state.written} writes, "
                          f"{result.verified_blocks[load.plan.name]} blocks verified")
        # The hops were checked over one session that followed the guest; a new
        # login (host forward, key exchange, sshd fork) must work on the last
        # process too.
        t0 = time.monotonic()
        error = new_login_error(self.current, SESSION_SECONDS)
        if error is not None:
            raise HopFailure("ssh-dead", self._hop, f"the session that followed the guest "
                             f"works, but a new SSH login to {self.current.name} fails: "
                             f"{error}", process=self.current.name)
        result.login_s = time.monotonic() - t0
        self.progress(f"a new SSH login to {self.current.name} works ({result.login_s:.2f} s)")

    def guarded(self, step: Callable[[], Any]) -> Any:
        """Run a step; turn any harness error into a HopFailure of the right kind."""
        try:
            return step()
        except HopFailure:
            raise
        except HarnessError as exc:
            raise self._classify(exc) from None

    def _classify(self, exc: HarnessError) -> HopFailure:
        # A dead QEMU explains every other symptom (SSH EOF, QMP lost): look first,
        # and give the current one a moment (an aborting QEMU is alive while it dumps core).
        for guest in self.live:
            if guest.process is not None and not guest.process.alive():
                return died(guest, self._hop, "the checks after the hop", role="process")
        if self.current is not None and self.current in self.live \
                and not isinstance(exc, DeadlineExceeded) and exits_soon(self.current):
            return died(self.current, self._hop, "the checks after the hop", role="process")
        # A guest that oopsed or panicked (oops=panic, panic=-1: it reboots) loses
        # SSH too; the console says why.
        for guest in self.live:
            trouble = guest.console.trouble() if guest.console is not None else []
            if trouble:
                return HopFailure("guest-trouble", self._hop,
                                  f"the console of {guest.name} shows: {trouble[0].strip()} "
                                  f"(then: {exc.message})", tail="\n".join(trouble[-20:]),
                                  process=guest.name)
        if isinstance(exc, DeadlineExceeded):
            return HopFailure("guest-hang", self._hop, exc.message, tail=exc.tail)
        from harness.guest.ssh import SshUnavailable

        if isinstance(exc, SshUnavailable):
            return HopFailure("ssh-dead", self._hop, exc.message, tail=exc.tail)
        return HopFailure("guest-hang" if "timeout" in exc.message else "ssh-dead",
                          self._hop, exc.message, tail=exc.tail)

    def _show(self, record: HopRecord) -> None:
        s = record.stats
        load = " ".join(f"{k}={v.written}" for k, v in record.loads.items())
        down = f"{s.downtime_ms:.0f} ms" if s.downtime_ms is not None else "?"
        self.progress(f"hop {s.hop} {s.source}->{s.destination}: {s.total_s:.2f} s "
                      f"(downtime {down}, {(s.ram_bytes or 0) / 1e6:.0f} MB), "
                      f"checks {record.check_s:.2f} s; writes {load or '-'}")

    def _post_mortem(self, failure: HopFailure) -> None:
        guest = self.current
        if guest is not None and guest.process is not None and guest.process.alive():
            self._save_dmesg(guest)
        involved = self.guests[-2:]
        cores = [str(core.relative_to(self.artifacts)) for g in self.guests
                 if g.process is not None for core in g.process.cores()]
        where = (", ".join(cores) if cores
                 else f"none written; this system sends them {core_dump_policy()}")
        (self.artifacts / "failure.txt").write_text(
            failure.describe() + "\n\nprocesses of the failing hop: "
            + ", ".join(f"{g.name}/ (qemu.cmdline, qmp.log, console.log, qemu.stderr)"
                        for g in involved) + f"\ncore dumps: {where}\n")

    def _save_dmesg(self, guest: Guest) -> None:
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
        (self.artifacts / "dmesg.txt").write_text(dmesg)


def write_reproduce(path: Path, argv: Sequence[str], cwd: Path) -> None:
    import os
    import shlex

    path.write_text("#!/bin/sh\n# Replays the same topology, seed and hop sequence.\n"
                    f"cd {shlex.quote(str(cwd))}\nexec {shlex.join(argv)} \"$@\"\n")
    os.chmod(path, 0o755)
