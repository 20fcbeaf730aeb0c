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
  `verified`, `bad`, `first_bad`, `ioerr`.  They are guest RAM, so they
  migrate with the guest.
- The disk is found by the sysfs PCI path of its controller (the topology's
  device, located in QEMU's view), never by guessing /dev/sda or /dev/vdb.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError
from harness.views import sysfs_path

LoadMode = Literal["write", "mixed"]
BLOCK_SIZE = 64 * 1024
MAX_BLOCKS = 128          # 8 MiB ring per disk: the final verification stays short
LINE = 64                 # bytes per pattern line, newline included
STATE_DIR = "/tmp/pcih-load"


class Shell(Protocol):
    """What a load needs from a guest: `execute` and `succeed` over SSH."""

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]: ...

    def succeed(self, command: str, timeout: float = 60.0) -> str: ...


class DataMismatch(HarnessError):
    """A block read back from the disk is not what the load wrote."""

    def __init__(self, message: str, *, disk: str, block: int | None, tail: str | None = None):
        super().__init__(message, tail=tail)
        self.disk = disk
        self.block = block


# --------------------------------------------------------------------------- pattern

def pattern_line(name: str, seed: int, block: int, generation: int) -> str:
    """The 63 visible characters of one line of a block (the guest adds the newline)."""
    text = f"pcih {name} seed={seed} blk={block:06d} gen={generation:06d}"
    if len(text) > LINE - 1:
        raise ValueError(f"pattern line too long for disk name {name!r}")
    return text.ljust(LINE - 1)


def block_bytes(name: str, seed: int, block: int, generation: int,
                block_size: int = BLOCK_SIZE) -> bytes:
    return ((pattern_line(name, seed, block, generation) + "\n") * (block_size // LINE)).encode()


def block_md5(name: str, seed: int, block: int, generation: int,
              block_size: int = BLOCK_SIZE) -> str:
    return hashlib.md5(block_bytes(name, seed, block, generation, block_size)).hexdigest()


@dataclass(frozen=True)
class LoadPlan:
    """Which block each write goes to; derived from the seed alone."""

    name: str
    seed: int
    blocks: int
    stride: int
    offset: int
    block_size: int = BLOCK_SIZE

    @classmethod
    def from_seed(cls, name: str, seed: int, disk_bytes: int,
                  block_size: int = BLOCK_SIZE) -> LoadPlan:
        blocks = max(1, min(disk_bytes // block_size, MAX_BLOCKS))
        rng = random.Random(f"{seed}:{name}")
        stride = 1
        if blocks > 2:
            choices = [s for s in range(1, blocks) if math.gcd(s, blocks) == 1]
            stride = rng.choice(choices)
        return cls(name, seed, blocks, stride, rng.randrange(blocks), block_size)

    def block_of(self, write_index: int) -> int:
        return (write_index * self.stride + self.offset) % self.blocks

    def expected(self, written: int) -> dict[int, int]:
        """{block: generation} after `written` writes (blocks never written are absent)."""
        out: dict[int, int] = {}
        for i in range(max(0, written - self.blocks), written):
            out[self.block_of(i)] = i // self.blocks
        return out


# --------------------------------------------------------------------------- finding the disk

FIND_SCRIPT = ("for b in /sys/block/*; do [ -e \"$b/device\" ] && "
               "echo \"$(basename \"$b\") $(readlink -f \"$b/device\")\"; done; true")


def parse_block_devices(text: str) -> dict[str, tuple[str, ...]]:
    """FIND_SCRIPT output -> {block device name: PCI path of its controller}."""
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        name, _, real = line.strip().partition(" ")
        if name and real:
            out[name] = sysfs_path(real)
    return out


def find_disk(shell: Shell, pci_path: tuple[str, ...], what: str) -> str:
    """/dev/NAME of the one disk whose controller sits at `pci_path`."""
    found = parse_block_devices(shell.succeed(FIND_SCRIPT))
    matches = sorted(name for name, path in found.items() if path == pci_path)
    if len(matches) != 1:
        seen = ", ".join(f"{n} at {'/'.join(p) or '?'}" for n, p in sorted(found.items()))
        raise HarnessError(f"{what}: expected one disk behind PCI function "
                           f"{'/'.join(pci_path)}, the guest has {matches or 'none'} there",
                           fix="check that the guest driver bound (lsmod, dmesg)",
                           tail=f"guest block devices: {seen or 'none'}")
    return f"/dev/{matches[0]}"


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
  vb=$(( (j * {plan.stride} + {plan.offset}) % {n} )); vg=$(( j / {n} ))
  want=$({_gen_cmd(plan, "$vb", "$vg")} | md5sum | cut -d' ' -f1)
  got=$(dd if={device} bs={bs} skip=$vb count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  if [ "$want" = "$got" ]; then v=$((v+1)); else bad=$((bad+1)); [ -n "$fb" ] || fb="$vb:$vg:$got"; fi"""
    return f"""d={d}
renice -n 19 -p $$ >/dev/null 2>&1
i=0; v=0; bad=0; fb=; ioerr=0
rm -f $d/stop $d/stopped
while [ ! -e $d/stop ]; do
  b=$(( (i * {plan.stride} + {plan.offset}) % {n} )); g=$(( i / {n} ))
  {_gen_cmd(plan, "$b", "$g")} | dd of={device} bs={bs} seek=$b count=1 iflag=fullblock oflag=direct conv=notrunc 2>>$d/dd.err || ioerr=$((ioerr+1))
  i=$((i+1)){verify}
  echo "written=$i verified=$v bad=$bad first_bad=$fb ioerr=$ioerr" > $d/state.new
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

    @classmethod
    def parse(cls, line: str) -> LoadState:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        try:
            return cls(int(fields["written"]), int(fields["verified"]), int(fields["bad"]),
                       fields.get("first_bad", ""), int(fields["ioerr"]))
        except (KeyError, ValueError):
            raise HarnessError(f"unreadable load state line {line!r}") from None


class DiskLoad:
    """One background load on one guest disk."""

    def __init__(self, plan: LoadPlan, device: str, mode: LoadMode):
        self.plan = plan
        self.device = device
        self.mode = mode
        self.dir = f"{STATE_DIR}/{plan.name}"

    def start(self, shell: Shell) -> None:
        script = loop_script(self.plan, self.device, self.mode)
        shell.succeed(f"mkdir -p {self.dir} && cat > {self.dir}/run.sh <<'PCIH_EOF'\n"
                      f"{script}PCIH_EOF\n"
                      f"echo 'written=0 verified=0 bad=0 first_bad= ioerr=0' > {self.dir}/state")
        # setsid + no stdio: the loop outlives the SSH session and every migration.
        # The loop renices itself to 19: dropbear and the checks get the vCPU first.
        shell.succeed(f"setsid sh {self.dir}/run.sh </dev/null >/dev/null 2>&1 &")

    def wait_started(self, shell: Shell, deadline: Deadline) -> LoadState:
        """Wait for the first completed write: a loop that cannot run fails here."""
        while True:
            state = self.state(shell)
            if state.written > 0:
                return state
            if deadline.expired():
                _, err = shell.execute(f"cat {self.dir}/dd.err; ps")
                raise HarnessError(f"{deadline.describe()}: the load on {self.plan.name} "
                                   f"({self.device}) never completed a write", tail=err)
            time.sleep(0.05)

    def state_command(self) -> str:
        return f"echo \"@@load {self.plan.name} $(cat {self.dir}/state)\""

    def state(self, shell: Shell) -> LoadState:
        return parse_states(shell.succeed(self.state_command()))[self.plan.name]

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

    def verify_all(self, shell: Shell, written: int) -> int:
        """Read every written block back (direct I/O) and compare with the host's
        own md5 of the pattern; returns the number of blocks verified."""
        expected = self.plan.expected(written)
        if not expected:
            return 0
        blocks = " ".join(str(b) for b in sorted(expected))
        out = shell.succeed(
            f"for b in {blocks}; do echo \"$b $(dd if={self.device} bs={self.plan.block_size} "
            f"skip=$b count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\"; done",
            timeout=300)
        got = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        for block in sorted(expected):
            want = block_md5(self.plan.name, self.plan.seed, block, expected[block],
                             self.plan.block_size)
            if got.get(str(block)) != want:
                head = shell.execute(f"dd if={self.device} bs={self.plan.block_size} "
                                     f"skip={block} count=1 iflag=direct 2>/dev/null | head -c 128")
                raise DataMismatch(
                    f"{self.plan.name} ({self.device}): first bad block {block}: md5 "
                    f"{got.get(str(block), 'unread')}, expected {want} (generation "
                    f"{expected[block]} of {written} writes)", disk=self.plan.name, block=block,
                    tail=f"block {block} starts with: {head[1]!r}\nexpected: "
                         f"{pattern_line(self.plan.name, self.plan.seed, block, expected[block])!r}")
        return len(expected)


def parse_states(text: str) -> dict[str, LoadState]:
    """Lines "@@load NAME written=..." (from state_command) -> {name: state}."""
    out: dict[str, LoadState] = {}
    for line in text.splitlines():
        if line.startswith("@@load "):
            _, name, rest = line.split(" ", 2)
            out[name] = LoadState.parse(rest)
    return out
