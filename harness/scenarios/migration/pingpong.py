"""Ping-pong migration under disk load: hop after hop to a fresh QEMU, checked every hop.

After every hop the destination must run, the guest must answer SSH (on the
session opened at boot, which follows the guest from process to process:
slirp migrates its TCP connection), neither
console may show kernel trouble, the PCI state (QEMU view and guest view) must
equal the state before the hop, and every load (hoploads: disk blocks,
memory pages, ext4 files) must still make progress and read back right
everything written since its previous check.  At the end the loads stop, the
rest is read back, the file systems are checked, and a new SSH login to the
last process must work.  SIGINT/SIGTERM (`request_stop`) end the run after
the current step, with the same final checks as a limit reached.

The run stops at the first failure and leaves in its artifact directory one
sub-directory per QEMU process (g00 booted, gNN the destination of hop NN:
command line, QMP transcript, console log, stderr, a per-process
reproduce.sh), `hops.jsonl`, `failure.txt`, `dmesg.txt` when the guest still
answers, and the top-level `reproduce.sh` the caller supplies.

The run's values (options, hop records, result) are pingpong_data.py; naming
a failure and the post-mortem files, pingpong_failure.py.  Both are re-exported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.guest.running import Guest, LaunchPlan
from harness.progress import Progress
from harness.reproduce import write_reproduce
from harness.scenarios.migration import memscan
from harness.scenarios.migration.data import (
    HopRecord,
    PingPongOptions,
    PingPongResult,
    disk_targets,
)
from harness.scenarios.migration.failure import classify_failure, write_post_mortem
from harness.scenarios.migration.hop import (
    HopFailure,
    destination_plan,
    died,
    migrate,
    new_login_error,
    pin_machine,
    start_destination,
)
from harness.scenarios.migration.keepstate import (
    HopKeeper,
    HopRelay,
    KeptState,
    prune,
)
from harness.scenarios.migration.loads import (
    HopLoad,
    LoadOptions,
    build_loads,
    parse_loads,
)
from harness.scenarios.migration.ramdiff import compare_ram
from harness.scenarios.migration.reference import PciReference
from harness.scenarios.migration.switchstop import RunstateRewrite, StopRecord, Switcher
from harness.scenarios.threeview import collect_views
from harness.workloads.disk import DataLost, DataMismatch, LoadStalled, Verified

__all__ = ["HopRecord", "PingPong", "PingPongOptions", "PingPongResult", "disk_targets",
           "write_reproduce"]

# Freed guest pages are zeroed, so migration sends them as zero pages: an idle
# 512 MiB guest sends ~86 MB instead of ~109 MB (measured, QEMU 7.2, TCG).
KERNEL_ARGS = ("init_on_free=1",)
PROGRESS_SECONDS = 30.0   # every load must progress and be checked within this after a hop
STOP_SECONDS = 30.0
SESSION_SECONDS = 30.0
QmpCommand = tuple[str, dict[str, Any]]


class PingPong:
    """One run.  `run()` never raises for a failed hop: it returns the verdict."""

    def __init__(self, plan: LaunchPlan, artifacts: Path, options: PingPongOptions,
                 progress: Progress | None = None):
        self.plan = replace(plan, kernel_args=tuple(dict.fromkeys(plan.kernel_args + KERNEL_ARGS)),
                            migrating_ssh=True)
        if options.dst_binary is not None:
            self.plan = pin_machine(self.plan, options.dst_binary)
        if options.switch is not None and options.switch.kind == "io-error":
            self.plan = replace(self.plan, halt_on_disk_error=True)
        self.artifacts = artifacts
        self.options = options
        self.progress = progress or (lambda message: None)
        self.guests: list[Guest] = []        # every process started (shut down at the end)
        self.live: list[Guest] = []          # those not deliberately shut down yet
        self.current: Guest | None = None
        self.loads: list[HopLoad] = []
        self.replay: list[QmpCommand] = []   # hot-plug commands every destination repeats
        self.reference: PciReference | None = None   # the PCI state every hop keeps
        self._hop = 0
        self.stop_requested: str | None = None   # set by a signal handler: end the run
        self.kept: list[KeptState] = []
        self.injected: list[str] = []
        self._next: tuple[Guest, float] | None = None  # pre-spawned destination, its launch_s
        self.switcher = Switcher(options.switch, self.progress) if options.switch else None
        self.stops: dict[int, StopRecord] = {}

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
        if self.switcher is not None:  # a bad symbol is a UserError before the first hop
            # Before the loads start: the write load's ring fills in a few seconds
            # without a check, and a full ring issues no command to stop at.
            self.switcher.prepare(guest)
        if self.options.load != "none":
            self._start_loads(guest)
        self.refresh_reference()
        return guest

    def _start_loads(self, guest: Guest) -> None:
        o = self.options
        self.loads = build_loads(guest, LoadOptions(parse_loads(o.load), o.disks, o.seed,
                                                    o.memory_mib, o.memory_rate_mib_s),
                                 self.progress)

    def request_stop(self, why: str) -> None:
        """End the run after the current step (signal handlers call this)."""
        self.stop_requested = why

    def refresh_reference(self) -> None:
        """Take the current PCI views as what every later hop must preserve
        (call it again after a deliberate change such as a hot-plug)."""
        assert self.current is not None
        views = collect_views(self.current, lspci=False)
        if self.reference is None:
            self.reference = PciReference(views, self.current, self.progress)
        else:
            self.reference.reset(views, self.current)

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
        for kind, at in self.options.inject:
            if at == number:
                self._inject(kind)
        stop = None
        if self.switcher is not None:   # a load that waits on the host does no I/O to stop at
            self._between_hops(lambda: [load.make_room(src) for load in self.loads])
            stop = self.stops[number] = self.switcher.stop(src, number)
        keeper = self._keeper(number, dst)
        relay = None
        if keeper is not None or stop is not None:
            relay = HopRelay(number, dst, keeper.kept if keeper else None,
                             RunstateRewrite() if stop and stop.runstate == "debug" else None)
        hooks: list[Callable[[Guest], None]] = [relay.before_resume] if relay else []
        hooks += [keeper.before_resume] if keeper else []
        ram_s: list[float] = []
        if self.options.comparing_ram:
            hooks.append(lambda loaded: ram_s.append(self._compare_ram(src, loaded, number)))

        def before_resume(loaded: Guest) -> None:
            for hook in hooks:
                hook(loaded)

        try:
            stats = replace(migrate(src, dst, number, transport=self.options.transport,
                                    wrap_uri=relay.wrap_uri if relay else None,
                                    before_resume=before_resume if hooks else None,
                                    resume=stop is not None),
                            launch_s=launch_s)
        except HopFailure:
            if keeper and keeper.loaded:  # failed after its state was kept: replayable
                self._kept_done(keeper)
            raise
        if keeper:
            self._kept_done(keeper)
        self.current = dst
        if number < self.options.hops:
            # The next destination starts while this hop is checked: its ~0.1 s
            # start-up leaves the hop's critical path.
            self._spawn(number + 1)
        self.live.remove(src)
        if self.switcher is not None:
            self.switcher.release()
        rc = src.shutdown()
        if rc not in (0, None):
            raise died(src, number, "quit after a completed migration")
        t0 = time.monotonic()
        verified = self.check(number, src)
        record = HopRecord(stats, time.monotonic() - t0, verified,
                           self.kept[-1] if self.kept and self.kept[-1].hop == number else None,
                           ram_s[0] if ram_s else None, stop)
        with open(self.artifacts / "hops.jsonl", "a") as out:
            out.write(json.dumps(record.as_dict(), default=str) + "\n")
        return record

    def _compare_ram(self, src: Guest, dst: Guest, number: int) -> float:
        """Both paused: a page that differs is a write the migration lost."""
        kept = self.artifacts / "states" / f"hop{number:02d}"
        diff = compare_ram(src, dst, number, self.artifacts,
                           kept / "source-pages.bin" if self.options.keep_states > 0 else None)
        if not diff.clean:
            raise HopFailure("lost-dirty-pages", number, diff.describe(),
                             tail=(self.artifacts / f"ram-diff-hop-{number}.txt").read_text(),
                             process=dst.name)
        return diff.seconds

    def _inject(self, kind: str) -> None:
        current = self.current
        assert current is not None
        targets = [load for load in self.loads if load.kind == kind]
        if not targets:
            raise HarnessError(f"--inject {kind}: no {kind} load runs in this ping-pong")
        what = self._between_hops(lambda: targets[0].inject(current))
        self.injected.append(f"before hop {self._hop}: {what}")
        self.progress(f"injected fault before hop {self._hop}: {what}")

    def _between_hops(self, step: Callable[[], Any]) -> Any:
        """A load's step before a hop (inject, make_room): it may check a full ring."""
        try:
            return step()
        except (DataMismatch, LoadStalled) as exc:
            raise HopFailure("load-stalled" if isinstance(exc, LoadStalled) else "data-mismatch",
                             self._hop, f"before the hop: {exc.message}", tail=exc.tail) from None

    def _keeper(self, number: int, dst: Guest) -> HopKeeper | None:
        """What keeps hop `number`'s stream and disks, when states are kept."""
        if self.options.keep_states <= 0:
            return None
        kept = KeptState(number, self.artifacts / "states" / f"hop{number:02d}")
        kept.directory.mkdir(parents=True, exist_ok=True)
        return HopKeeper(kept, dst)

    def _kept_done(self, keeper: HopKeeper) -> None:
        """The hop completed: its replay script is written, older kept hops are pruned."""
        keeper.write_replay(self.artifacts)
        self.kept.append(keeper.kept)
        for old in self.kept[:-self.options.keep_states]:
            (self.artifacts / f"replay-hop{old.hop:02d}.sh").unlink(missing_ok=True)
        prune(self.kept, self.options.keep_states)

    def _spawn(self, number: int) -> None:
        assert self.current is not None
        binary = self.options.dst_binary if number % 2 == 1 else None
        plan = destination_plan(self.current, binary) if binary else self.plan
        if self.options.keep_states > 0 or self.options.comparing_ram:
            # Paused after loading: the disks are copied, or its RAM is compared
            # with the source's, before it runs.
            plan = replace(plan, extra_args=tuple(plan.extra_args) + ("-S",))
        name = f"g{number:02d}"
        started = time.monotonic()
        dst = start_destination(self.current, self.artifacts / name, name, number, plan=plan,
                                prepare=self._prepare if self.replay else None)
        self.guests.append(dst)
        self.live.append(dst)
        self._next = (dst, time.monotonic() - started)

    def check(self, number: int, src: Guest) -> dict[str, Verified]:
        """Console, PCI views and every load's data after hop `number`."""
        dst = self.current
        assert dst is not None and dst.console is not None and self.reference is not None
        self._console_check(number, src, dst)
        self.reference.check(number, dst, collect_views(dst, lspci=False))
        verified = self._check_loads(number, dst, finish=False)
        self._console_check(number, src, dst)
        return verified

    def _console_check(self, number: int, src: Guest, dst: Guest) -> None:
        for guest in (src, dst):
            if guest.console is None:
                continue
            trouble = guest.console.trouble()
            if trouble:
                raise HopFailure("guest-trouble", number,
                                 f"the console of {guest.name} shows: {trouble[0].strip()}",
                                 tail="\n".join(trouble[-20:]), process=guest.name)

    def _check_loads(self, number: int, dst: Guest, *, finish: bool) -> dict[str, Verified]:
        """Each load's check after hop `number` (or its final check), as HopFailures."""
        out: dict[str, Verified] = {}
        for load in self.loads:
            deadline = Deadline(STOP_SECONDS if finish else PROGRESS_SECONDS,
                                f"{'final ' if finish else ''}check of the {load.kind} load "
                                f"{load.name} after hop {number}")
            try:
                out[load.name] = (load.finish(dst, number, deadline) if finish
                                  else load.after_hop(dst, number, deadline))
            except DataMismatch as exc:
                self._console_check(number, dst, dst)  # a crash explains a mismatch first
                raise HopFailure("data-lost" if isinstance(exc, DataLost) else "data-mismatch",
                                 number, exc.message, tail=exc.tail, process=dst.name) from None
            except LoadStalled as exc:
                self._console_check(number, dst, dst)
                raise HopFailure("load-stalled", number, exc.message,
                                 tail=dst.console.tail() if dst.console else None,
                                 process=dst.name) from None
        return out

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
            while self._hop < self.options.hops and self.stop_requested is None:
                if self.options.max_time_s is not None and \
                        time.monotonic() - started >= self.options.max_time_s:
                    self.progress(f"--max-time reached after {self._hop} hops")
                    break
                record = self.guarded(self.hop)
                result.records.append(record)
                self.progress(record.describe())
            if self.stop_requested is not None:
                self.progress(f"{self.stop_requested}: stopping after {self._hop} hops; "
                              "final checks (send it again to skip them)")
            elif not result.records:
                # --max-time used up by the boot: nothing was migrated, nothing shown
                result.incomplete = (f"no hop ran: --max-time {self.options.max_time_s:g} s "
                                     f"ran out during the boot ({result.boot_s:.1f} s)")
            self.guarded(lambda: self._finish(result))
            result.ok = result.incomplete is None
        except HopFailure as failure:
            result.failure = write_post_mortem(
                failure, self.artifacts, self.guests, self.current,
                amend=lambda f: memscan.scan_after_failure(
                    self.current, f, self.artifacts, self.plan.topology.memory,
                    any(load.kind == "memory" for load in self.loads), self.progress))
        except KeyboardInterrupt:
            # A second signal: no final checks, not ok, but a summary of what was done.
            result.ok = False
            result.final_checks = (f"skipped: {self.stop_requested or 'interrupted'} "
                                   "during the run or its final checks")
            result.incomplete = (f"final checks skipped: a second signal "
                                 f"({self.stop_requested or 'interrupted'}) stopped the run "
                                 f"after {len(result.records)} hops")
        finally:
            if self.switcher is not None:
                self.switcher.release()
            for guest in self.guests:
                guest.shutdown()
            result.notes = list(self.reference.notes) if self.reference else []
            result.stopped_by = self.stop_requested
            result.injected = list(self.injected)
            result.kept_states = list(self.kept)
            result.stops = dict(self.stops)
            for load in self.loads:
                summary = getattr(load, "summary", None)
                result.load_summaries[load.name] = summary() if summary else {}
        return result

    def _finish(self, result: PingPongResult) -> None:
        assert self.current is not None
        result.final = self._check_loads(self._hop, self.current, finish=True)
        for load in self.loads:
            verified = result.final[load.name]
            last = getattr(load, "last", None)
            if load.kind in ("write", "mixed"):
                written = int(getattr(last, "written", 0))
                result.writes[load.name] = written
                # what the checks read back, counted: every write once, or the run fails
                result.verified_blocks[load.name] = result.read_back(load.name)
                if result.verified_blocks[load.name] != written:
                    raise HopFailure("harness-error", self._hop, (
                        f"{load.name}: {written} writes, but the checks read back "
                        f"{result.verified_blocks[load.name]} blocks"), process=None)
            self.progress(f"{load.kind} {load.name}: final check {verified.units} "
                          f"{'files' if load.kind == 'fs' else 'units'}, "
                          f"{verified.bytes / 2**20:.1f} MiB in {verified.seconds:.2f} s")
        result.final_checks = "done"
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
        except HopFailure as exc:
            self._at_switch_point(exc)
            raise
        except HarnessError as exc:
            raise self._at_switch_point(
                classify_failure(exc, self._hop, self.live, self.current)) from None

    def _at_switch_point(self, failure: HopFailure) -> HopFailure:
        """A failed hop a switch point stopped says where, and how to stop there again."""
        stop = self.stops.get(failure.hop)
        if stop is not None:
            what = f" ({stop.instruction})" if stop.instruction else ""
            failure.add(f"the source was stopped at {stop.where}{what} "
                        f"[{' '.join(stop.point.options())}]")
        return failure

