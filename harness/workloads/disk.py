"""Verifiable guest disk load: seeded blocks written to a raw disk, re-read, verified.

Why this shape: a migration bug that loses or misplaces a DMA write shows up as
a block whose content is not what was written, so every block carries its own
identity (disk, seed, block number, generation) and the host can compute, with
no help from the guest, what each block must hold after W writes.

- Write number i (0-based) goes to block (i * stride + offset) mod N with
  generation i // N; stride is coprime to N, so one generation touches every
  block once.  Seed, stride and offset come from the run's seed.
- A block is one 64-byte line repeated: "pcih NAME seed=S blk=B gen=G" padded
  to 63 characters plus a newline.  busybox makes it with `yes | head -c`, the
  host with `block_bytes()`: two independent implementations of one rule.
- The guest loop writes with `dd iflag=fullblock oflag=direct` (the write
  reaches the device, not the page cache, so it is in flight across a
  migration; fullblock because a pipe delivers short reads); in "mixed" mode
  each write is followed by a direct re-read of an earlier block, verified
  in the guest against the regenerated pattern.
- Counters live in a tmpfs file the host reads over SSH: `written`,
  `verified`, `bad`, `first_bad`, `ioerr`, `waits`.  They are guest RAM, so
  they migrate with the guest.
- Every write is read back by the host, in every mode: after each hop the
  host verifies the writes made since its previous check (`verify_range`),
  then acknowledges them (`ack` file).  The loop never runs more than N
  writes past the acknowledgement (it waits, counted in `waits`), so no
  block is overwritten before the host has read the generation it holds:
  the checks cover every generation by construction, not by luck.
- The disk is found by the sysfs PCI path of its controller (the topology's
  device, located in QEMU's view), never by guessing /dev/sda or /dev/vdb.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError
from harness.protocols import Shell
from harness.workloads.blocks import BLOCK_SIZE, block_md5, pattern_line

LoadMode = Literal["write", "mixed"]
MAX_BLOCKS = 128          # 8 MiB ring per disk: the final verification stays short
STATE_DIR = "/tmp/pcih-load"


class DataMismatch(HarnessError):
    """A block read back from the disk is not what the load wrote."""

    def __init__(self, message: str, *, disk: str, block: int | None, tail: str | None = None):
        super().__init__(message, tail=tail)
        self.disk = disk
        self.block = block


@dataclass(frozen=True)
class LoadPlan:
    """Which block each write goes to; derived from the seed alone."""

    name: str
    seed: int
    blocks: int
    stride: int
    offset: int
    block_size: int = BLOCK_SIZE
    base: int = 0             # first block of the ring (a file system may sit below it)

    @classmethod
    def from_seed(cls, name: str, seed: int, disk_bytes: int,
                  block_size: int = BLOCK_SIZE, base_bytes: int = 0) -> LoadPlan:
        base = -(-base_bytes // block_size)
        blocks = max(1, min(disk_bytes // block_size - base, MAX_BLOCKS))
        rng = random.Random(f"{seed}:{name}")
        stride = 1
        if blocks > 2:
            choices = [s for s in range(1, blocks) if math.gcd(s, blocks) == 1]
            stride = rng.choice(choices)
        return cls(name, seed, blocks, stride, rng.randrange(blocks), block_size, base)

    def block_of(self, write_index: int) -> int:
        """The disk block (counted from the start of the disk) of write `write_index`."""
        return (write_index * self.stride + self.offset) % self.blocks + self.base

    def generation_of(self, write_index: int) -> int:
        return write_index // self.blocks

    def expected(self, written: int) -> dict[int, int]:
        """{block: generation} after `written` writes (blocks never written are absent)."""
        out: dict[int, int] = {}
        for i in range(max(0, written - self.blocks), written):
            out[self.block_of(i)] = i // self.blocks
        return out


# --------------------------------------------------------------------------- the guest loop

def _gen_cmd(plan: LoadPlan, blk: str, gen: str) -> str:
    # printf pads with %-63s; the name and seed are fixed, blk/gen are shell variables.
    return (f"yes \"$(printf '%-63s' \"pcih {plan.name} seed={plan.seed} "
            f"blk=$(printf %06d {blk}) gen=$(printf %06d {gen})\")\" | head -c {plan.block_size}")


def loop_script(plan: LoadPlan, device: str, mode: LoadMode) -> str:
    """The busybox sh loop the guest runs in the background."""
    d = f"{STATE_DIR}/{plan.name}"
    n, bs = plan.blocks, plan.block_size
    verify = ""
    if mode == "mixed":
        # Re-read the block written k writes ago (k from 1 to min(i, N)), direct I/O.
        verify = f"""
  w=$(( i < {n} ? i : {n} )); k=$(( 1 + (i * 7919) % w )); j=$(( i - k ))
  vb=$(( (j * {plan.stride} + {plan.offset}) % {n} + {plan.base} )); vg=$(( j / {n} ))
  want=$({_gen_cmd(plan, "$vb", "$vg")} | md5sum | cut -d' ' -f1)
  got=$(dd if={device} bs={bs} skip=$vb count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  if [ "$want" = "$got" ]; then v=$((v+1)); else bad=$((bad+1)); [ -n "$fb" ] || fb="$vb:$vg:$got"; fi"""
    return f"""d={d}
renice -n 19 -p $$ >/dev/null 2>&1
i=0; v=0; bad=0; fb=; ioerr=0; ack=0; waits=0; skip=-1
rm -f $d/stop $d/stopped
while [ ! -e $d/stop ]; do
  if [ $i -ge $(( ack + {n} )) ]; then
    read ack < $d/ack 2>/dev/null || ack=0
    if [ $i -ge $(( ack + {n} )) ]; then
      waits=$((waits+1))
      echo "written=$i verified=$v bad=$bad first_bad=$fb ioerr=$ioerr waits=$waits" > $d/state.new
      mv $d/state.new $d/state; sleep 0.05; continue
    fi
  fi
  if [ -e $d/skip ]; then
    read skip < $d/skip; rm -f $d/skip; [ $skip -ge $i ] || skip=$i; echo $skip > $d/skipped
  fi
  b=$(( (i * {plan.stride} + {plan.offset}) % {n} + {plan.base} )); g=$(( i / {n} ))
  if [ $i != $skip ]; then
  {_gen_cmd(plan, "$b", "$g")} | dd of={device} bs={bs} seek=$b count=1 iflag=fullblock oflag=direct conv=notrunc 2>>$d/dd.err || ioerr=$((ioerr+1))
  fi
  i=$((i+1)){verify}
  echo "written=$i verified=$v bad=$bad first_bad=$fb ioerr=$ioerr waits=$waits" > $d/state.new
  mv $d/state.new $d/state
done
echo stopped > $d/stopped
"""


@dataclass(frozen=True)
class LoadState:
    written: int
    verified: int
    bad: int
    first_bad: str  # "BLOCK:GEN:GOT_MD5" of the first mismatch in mixed mode, "" if none
    ioerr: int
    waits: int = 0  # rounds the loop waited for the host to check its writes

    @classmethod
    def parse(cls, line: str) -> LoadState:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        try:
            return cls(int(fields["written"]), int(fields["verified"]), int(fields["bad"]),
                       fields.get("first_bad", ""), int(fields["ioerr"]),
                       int(fields.get("waits", "0")))
        except (KeyError, ValueError):
            raise HarnessError(f"unreadable load state line {line!r}") from None


@dataclass(frozen=True)
class Verified:
    """What one check read back and found right."""

    bytes: int = 0
    files: int = 0
    units: int = 0          # blocks, pages or files, in the load's own unit
    seconds: float = 0.0


class DiskLoad:
    """One background load on one guest disk."""

    kind = "write"

    def __init__(self, plan: LoadPlan, device: str, mode: LoadMode):
        self.plan = plan
        self.device = device
        self.mode = mode
        self.kind = mode   # "write" or "mixed": what --inject and the reports name
        self.name = plan.name
        self.dir = f"{STATE_DIR}/{plan.name}"
        self.acked = 0      # every write below this index was read back by the host
        # (first write index, hop) for each check: which hop interval a write belongs to
        self._marks: list[tuple[int, int]] = [(0, 0)]
        self.last: LoadState | None = None
        self._released = 0  # writes release_ring checked since the last check

    def start(self, shell: Shell) -> None:
        script = loop_script(self.plan, self.device, self.mode)
        shell.succeed(f"mkdir -p {self.dir} && cat > {self.dir}/run.sh <<'PCIH_EOF'\n"
                      f"{script}PCIH_EOF\n"
                      f"echo 0 > {self.dir}/ack && "
                      f"echo 'written=0 verified=0 bad=0 first_bad= ioerr=0' > {self.dir}/state")
        # setsid + no stdio: the loop outlives the SSH session and every migration.
        # The loop renices itself to 19: dropbear and the checks get the vCPU first.
        shell.succeed(f"setsid sh {self.dir}/run.sh </dev/null >/dev/null 2>&1 &")

    def wait_started(self, shell: Shell, deadline: Deadline) -> LoadState:
        """Wait for the first completed write: a loop that cannot run fails here."""
        def never() -> HarnessError:
            _, err = shell.execute(f"cat {self.dir}/dd.err; ps")
            return HarnessError(f"{deadline.describe()}: the load on {self.plan.name} "
                                f"({self.device}) never completed a write", tail=err)

        self.last = wait_first_write(lambda: self.state(shell), deadline, never)
        return self.last

    def state_command(self) -> str:
        return f"echo \"@@load {self.plan.name} $(cat {self.dir}/state)\""

    def state(self, shell: Shell) -> LoadState:
        return parse_states(shell.succeed(self.state_command()))[self.plan.name]

    def inject(self, shell: Shell) -> str:
        """Make the loop skip (lose) one write a few writes from now: the harness's own
        lost write, which the next check must catch and name."""
        state = self.state(shell)
        shell.succeed(f"rm -f {self.dir}/skipped; echo {state.written + 2} > {self.dir}/skip")
        # The loop may have passed that write before it read the request (a fast
        # disk: the injection then went unnoticed): it skips its next write
        # instead and says which (`skipped`).  Back once the write is skipped.
        # A loop that filled its ring waits for an acknowledgement before its next
        # write (a fast disk fills it before the first hop): the writes so far are
        # checked and acknowledged here, as a check would, or the skip never comes.
        deadline = Deadline(30, f"the {self.plan.name} load skipping a write")
        while True:
            status, out = shell.execute(f"cat {self.dir}/skipped 2>/dev/null")
            written = self.state(shell).written
            if status == 0 and out.strip().isdigit() and written > int(out.strip()):
                index = int(out.strip())
                break
            self._release_if_full(shell, written)
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the load on {self.plan.name} "
                                  f"({self.device}) did not reach the write to skip")
            time.sleep(0.05)
        return (f"{self.plan.name}: write #{index} (block {self.plan.block_of(index)}, "
                f"generation {self.plan.generation_of(index)}) skipped")

    def stop(self, shell: Shell, deadline: Deadline) -> LoadState:
        shell.succeed(f"touch {self.dir}/stop")
        while not deadline.expired():
            status, _ = shell.execute(f"test -e {self.dir}/stopped")
            if status == 0:
                return self.state(shell)
        raise DeadlineExceeded(f"{deadline.describe()}: the load on {self.plan.name} "
                               f"({self.device}) did not stop (a write is stuck?)")

    def check(self, state: LoadState) -> None:
        """Raise DataMismatch when the guest's own re-reads found a bad block."""
        if state.bad:
            block, gen, got = (state.first_bad.split(":") + ["", "", ""])[:3]
            want = block_md5(self.plan.name, self.plan.seed, int(block), int(gen),
                             self.plan.block_size) if block.isdigit() and gen.isdigit() else "?"
            raise DataMismatch(f"{self.plan.name} ({self.device}): {state.bad} re-read(s) "
                               f"did not verify; first bad block {block} (generation {gen}): "
                               f"md5 {got}, expected {want}", disk=self.plan.name,
                               block=int(block) if block.isdigit() else None)
        if state.ioerr:
            raise DataMismatch(f"{self.plan.name} ({self.device}): {state.ioerr} write(s) "
                               f"failed with an I/O error in the guest (dd)",
                               disk=self.plan.name, block=None)

    def hop_of(self, write_index: int) -> int:
        """The hop after which write `write_index` was made (0: before the first hop)."""
        hop = 0
        for first, number in self._marks:
            if write_index >= first:
                hop = number
        return hop

    def after_hop(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        """After hop `hop`: the load made progress, and every write since the previous
        check reads back right; then those writes are acknowledged."""
        t0 = time.monotonic()
        # Progress means a write the host has not read back yet.  Not the count
        # wait_started saw: a fast disk can fill the whole ring before that look, and
        # the loop then waits for the very acknowledgement this check would give.
        before = self.acked
        while True:
            state = self.state(shell)
            self.check(state)
            if state.written > before:
                break
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the load on {self.plan.name} "
                                  f"({self.device}) is stuck at {state.written} writes")
            time.sleep(0.05)
        self.last = state
        count = self.verify_range(shell, self.acked, state.written)
        self._acknowledge(shell, state.written, hop)
        return self._counted(count, t0)

    def finish(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        """Stop the loop and read back every write not checked yet."""
        t0 = time.monotonic()
        state = self.stop(shell, deadline)
        self.check(state)
        self.last = state
        count = self.verify_range(shell, self.acked, state.written)
        self._acknowledge(shell, state.written, hop + 1)
        return self._counted(count, t0)

    def release_ring(self, shell: Shell, written: int) -> None:
        """Check and acknowledge writes up to `written` between two hops: the loop may
        go on.  No hop mark: these writes still belong to the interval they were made
        in; the next check counts them (every write is counted once)."""
        self._released += self.verify_range(shell, self.acked, written)
        self.acked = written
        shell.succeed(f"echo {written} > {self.dir}/ack")

    def make_room(self, shell: Shell) -> bool:
        """A full ring issues no I/O, so a switch point in the disk path is never
        reached (switch-point-not-reached at hop 1 of a sweep under CPU load: the
        ring filled between the loads' start and the stop): release it."""
        return self._release_if_full(shell, self.state(shell).written)

    def _release_if_full(self, shell: Shell, written: int) -> bool:
        full = written >= self.acked + self.plan.blocks
        if full:
            self.release_ring(shell, written)
        return full

    def _counted(self, count: int, t0: float) -> Verified:
        """This check's Verified, with the writes a release checked before it."""
        count, self._released = count + self._released, 0
        return Verified(bytes=count * self.plan.block_size, units=count,
                        seconds=time.monotonic() - t0)

    def _acknowledge(self, shell: Shell, written: int, next_hop: int) -> None:
        self.acked = written
        self._marks.append((written, next_hop))
        shell.succeed(f"echo {written} > {self.dir}/ack")

    def verify_range(self, shell: Shell, first: int, end: int) -> int:
        """Read back the blocks of writes first..end-1 (direct I/O) and compare each with
        the host's own md5 of the generation that write put there; returns the count.

        Valid because the loop never runs N writes past the acknowledgement
        (`first`): none of these blocks has been overwritten yet."""
        if end - first > self.plan.blocks:
            raise HarnessError(f"{self.plan.name}: {end - first} unchecked writes exceed the "
                               f"ring of {self.plan.blocks} blocks (the loop ignored its ack)")
        if end <= first:
            return 0
        writes = {self.plan.block_of(i): i for i in range(first, end)}
        blocks = " ".join(str(b) for b in sorted(writes))
        out = shell.succeed(
            f"for b in {blocks}; do echo \"$b $(dd if={self.device} bs={self.plan.block_size} "
            f"skip=$b count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\"; done",
            timeout=300)
        got = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        bad = []
        right = 0   # blocks read back and found right: the count returned
        for block in sorted(writes, key=writes.__getitem__):
            index = writes[block]
            gen = self.plan.generation_of(index)
            want = block_md5(self.plan.name, self.plan.seed, block, gen, self.plan.block_size)
            if got.get(str(block)) != want:
                bad.append((index, block, gen, want))
            else:
                right += 1
        if bad:
            index, block, gen, want = bad[0]
            head = shell.execute(f"dd if={self.device} bs={self.plan.block_size} "
                                 f"skip={block} count=1 iflag=direct 2>/dev/null | head -c 63")
            raise DataMismatch(
                f"{self.plan.name} ({self.device}): {len(bad)} of {end - first} blocks written "
                f"since the previous check read back wrong; first: block {block}, write "
                f"#{index} (generation {gen}, made after hop {self.hop_of(index)}): md5 "
                f"{got.get(str(block), 'unread')}, expected {want}; block starts with "
                f"{head[1]!r}, expected "
                f"{pattern_line(self.plan.name, self.plan.seed, block, gen)!r}",
                disk=self.plan.name, block=block,
                tail="bad writes (index block generation): "
                     + ", ".join(f"#{i} {b} {g}" for i, b, g, _ in bad[:20]))
        return right

    def verify_all(self, shell: Shell, written: int) -> int:
        """Read back the newest generation of every block (whatever was acknowledged)."""
        first = max(0, written - self.plan.blocks)
        return self.verify_range(shell, first, written)


class DataLost(DataMismatch):
    """What the load wrote is gone: a file it wrote is missing."""


class LoadStalled(HarnessError):
    """A load made no progress within the hop's deadline."""


def parse_states(text: str) -> dict[str, LoadState]:
    """Lines "@@load NAME written=..." (from state_command) -> {name: state}."""
    out: dict[str, LoadState] = {}
    for line in text.splitlines():
        if line.startswith("@@load "):
            _, name, rest = line.split(" ", 2)
            out[name] = LoadState.parse(rest)
    return out


class _Counted(Protocol):
    @property
    def written(self) -> int: ...


CountedState = TypeVar("CountedState", bound=_Counted)


def written_past(state: CountedState, index: int = 0) -> CountedState | None:
    """STATE once a load loop has completed more than INDEX writes, else None
    (a probe for Deadline.poll)."""
    return state if state.written > index else None


def wait_first_write(read_state: Callable[[], CountedState], deadline: Deadline,
                     never: Callable[[], HarnessError]) -> CountedState:
    """The loop's state after its first completed write; NEVER() (the load's own
    diagnosis) is raised when the deadline passes first."""
    state = deadline.poll(lambda: written_past(read_state()))
    if state is None:
        raise never()
    return state
