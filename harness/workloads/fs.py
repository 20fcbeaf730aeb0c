"""Verifiable file-system load: ext4 on a guest disk, files written, fsynced, checked.

Why: the disk load checks blocks under direct I/O; a file system adds what a
real guest does across a migration (page cache, journal, metadata, flushes),
so a lost or misplaced write shows up as a file with wrong contents or a file
system fsck rejects.

- The ext4 file system is made on the host by `mkfs.ext4` (the guest image has
  no e2fsprogs) as a FS_BYTES image, shipped gzipped over SSH and written to
  the start of the disk; the disk's block load, when it runs too, uses the
  blocks above it.
- The guest loop (busybox sh + awk) writes file k = i mod F with generation
  i // F: lines "pcih-fs NAME seed=S file=K gen=G line=L" padded to 63
  characters, to a temporary name, fsyncs it, renames it over f<k> and fsyncs
  the directory.  The host builds the same bytes in Python (`file_bytes`): two
  implementations of one rule.
- After each hop the host holds the loop (it waits between files), drops the
  guest's page cache so reads go to the disk, and compares the md5 of every
  file written so far with its own; a mismatch names the file and the first
  differing offset with both contents.
- At the end the file system is unmounted in the guest and checked on the host
  with `e2fsck -fn` on a raw copy of the disk (`qemu-img convert -U`).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError, UserError
from harness.guest.functions import put_file
from harness.protocols import Shell
from harness.workloads.disk import (
    DataLost,
    DataMismatch,
    LoadStalled,
    Verified,
    wait_first_write,
    written_past,
)

FS_BYTES = 32 * 1024 * 1024
FILES = 32
LINE = 64
STATE_DIR = "/tmp/pcih-fs"


def file_lines(k: int) -> int:
    """Lines of file k (16 to 64 KiB: files of several sizes, several extents)."""
    return 256 * (1 + (k * 7) % 4)


def file_bytes(name: str, seed: int, k: int, gen: int) -> bytes:
    return "".join(f"{f'pcih-fs {name} seed={seed} file={k:03d} gen={gen:06d} line={n:06d}':<63}\n"
                   for n in range(file_lines(k))).encode()


def loop_script(name: str, seed: int, mount: str) -> str:
    d = f"{STATE_DIR}/{name}"
    return f"""d={d}; m={mount}
renice -n 19 -p $$ >/dev/null 2>&1
i=0; ioerr=0; skip=-1
rm -f $d/stop $d/stopped
while [ ! -e $d/stop ]; do
  if [ -e $d/hold ]; then
    read h < $d/hold
    echo "written=$i ioerr=$ioerr held=$h" > $d/state.new; mv $d/state.new $d/state
    sleep 0.05; continue
  fi
  if [ -e $d/skip ]; then read skip < $d/skip; rm -f $d/skip; fi
  k=$(( i % {FILES} )); g=$(( i / {FILES} )); n=$(( 256 * (1 + (k * 7) % 4) ))
  awk -v k=$k -v g=$g -v n=$n 'BEGIN {{ for (l = 0; l < n; l++) printf "%-63s\\n", sprintf("pcih-fs {name} seed={seed} file=%03d gen=%06d line=%06d", k, g, l) }}' > $m/f$k.tmp || ioerr=$((ioerr+1))
  if [ $i = $skip ]; then printf 'LOST' | dd of=$m/f$k.tmp bs=1 seek=$(( 64 * 100 + 8 )) conv=notrunc 2>/dev/null; fi
  sync $m/f$k.tmp && mv $m/f$k.tmp $m/f$k && sync $m || ioerr=$((ioerr+1))
  i=$((i+1))
  echo "written=$i ioerr=$ioerr held=0" > $d/state.new; mv $d/state.new $d/state
done
echo stopped > $d/stopped
"""


@dataclass(frozen=True)
class FsState:
    written: int
    ioerr: int
    held: str  # "0" while writing; held, the token of the hold it obeys

    @classmethod
    def parse(cls, line: str) -> FsState:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        try:
            return cls(int(fields["written"]), int(fields["ioerr"]), fields.get("held") or "0")
        except (KeyError, ValueError):
            raise HarnessError(f"unreadable fs load state {line!r}") from None


def make_ext4(label: str) -> bytes:
    """A fresh FS_BYTES ext4 image made by the host's mkfs.ext4, gzipped."""
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    if not Path(mkfs).exists():
        raise UserError("--load fs needs mkfs.ext4 and e2fsck on the host",
                        fix="install e2fsprogs (bin/bootstrap.sh does it)")
    with tempfile.TemporaryDirectory(prefix="pcih-fs-") as tmp:
        image = Path(tmp) / "fs.img"
        with open(image, "wb") as f:
            f.truncate(FS_BYTES)
        proc = subprocess.run([mkfs, "-q", "-F", "-L", label[:16],
                               "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise HarnessError("mkfs.ext4 failed on the host", tail=proc.stderr)
        return gzip.compress(image.read_bytes(), compresslevel=6)


def host_fsck(disk: Path) -> str | None:
    """None when `e2fsck -fn` finds the ext4 at the start of `disk` (qcow2) clean,
    else its report."""
    e2fsck = shutil.which("e2fsck") or "/sbin/e2fsck"
    with tempfile.TemporaryDirectory(prefix="pcih-fsck-") as tmp:
        raw = Path(tmp) / "disk.raw"
        conv = subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw)],
                              capture_output=True, text=True, timeout=120, check=False)
        if conv.returncode != 0:
            return f"qemu-img convert {disk} failed: {conv.stderr.strip()}"
        with open(raw, "r+b") as f:
            f.truncate(FS_BYTES)
        proc = subprocess.run([e2fsck, "-fn", str(raw)], capture_output=True, text=True,
                              timeout=120, check=False)
        if proc.returncode != 0:
            return f"e2fsck -fn exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"
    return None


class FsLoad:
    """ext4 on one guest disk with a background writer, checked after every hop."""

    kind = "fs"

    def __init__(self, disk: str, device: str, seed: int, host_disk: Path | None = None):
        self.disk = disk
        self.name = f"fs-{disk}"
        self.device = device
        self.seed = seed
        self.host_disk = host_disk
        self.mount = f"/mnt/pcih-{self.name}"
        self.dir = f"{STATE_DIR}/{disk}"
        self.last: FsState | None = None
        self._made_after: dict[int, int] = {}   # file k -> hop after which it was last written
        self.fsck: str | None = None

    def start(self, shell: Shell) -> None:
        image = make_ext4(f"pcih-{self.disk}")
        shell.succeed(f"mkdir -p {self.dir} {self.mount}")
        put_file(shell, f"{self.dir}/fs.img.gz", image)
        shell.succeed(f"gunzip -c {self.dir}/fs.img.gz | dd of={self.device} bs=1M "
                      f"iflag=fullblock conv=fsync 2>/dev/null && rm {self.dir}/fs.img.gz && "
                      f"modprobe -a crc32c_generic ext4 && "
                      f"{{ mount -t ext4 {self.device} {self.mount} || "
                      f"{{ dmesg | tail -5; false; }}; }}", timeout=120)
        script = loop_script(self.disk, self.seed, self.mount)
        shell.succeed(f"cat > {self.dir}/run.sh <<'PCIH_EOF'\n{script}PCIH_EOF\n"
                      f"echo 'written=0 ioerr=0 held=0' > {self.dir}/state")
        shell.succeed(f"setsid sh {self.dir}/run.sh </dev/null >{self.dir}/out 2>&1 &")

    def state(self, shell: Shell) -> FsState:
        return FsState.parse(shell.succeed(f"cat {self.dir}/state"))

    def wait_started(self, shell: Shell, deadline: Deadline) -> FsState:
        def never() -> HarnessError:
            _, out = shell.execute(f"cat {self.dir}/out; ls -l {self.mount}")
            return HarnessError(f"{deadline.describe()}: the fs load on {self.disk} "
                                f"({self.device}) never wrote a file", tail=out)

        self.last = wait_first_write(lambda: self.state(shell), deadline, never)
        return self.last

    def make_room(self, shell: Shell) -> bool:
        """Nothing to do: the writer waits for the host only when held on purpose
        (after an injection, until the check that must see it)."""
        return False

    def inject(self, shell: Shell) -> str:
        # Held, the loop waits between files and reads `skip` before its next
        # write, so that write is the one corrupted.  (Read from `state` while
        # it ran, the index raced the loop: under load it had passed the skip
        # check of that write already and no write was ever corrupted.)
        state = self._hold(shell, Deadline(20, f"the fs load on {self.disk} pausing"))
        index = state.written
        shell.succeed(f"echo {index} > {self.dir}/skip; rm -f {self.dir}/hold")
        # Back only once the corrupted write is done: a check right after must
        # see it (the loop's state while held says held=1 until its next write,
        # so a hold at once would be taken for a new one and checked too early).
        written = Deadline(20, f"the fs load on {self.disk} writing file #{index}")
        if written.poll(lambda: written_past(self.state(shell), index)) is None:
            raise LoadStalled(f"{written.describe()}: the fs load on {self.disk} "
                              f"({self.device}) did not resume after the injection")
        # Held again until the next check (after_hop lifts it): running on, the loop
        # rewrites every file within 32 writes, and a hop that takes longer than that
        # erased the corruption before any check saw it (--inject fs@1 went unnoticed
        # in a real ping-pong under bin/test).
        self._hold(shell, Deadline(20, f"the fs load on {self.disk} pausing after the "
                                       "injection"))
        return (f"{self.name}: file f{index % FILES} (write #{index}) gets 'LOST' at offset "
                f"{64 * 100 + 8} before its fsync")

    def _hold(self, shell: Shell, deadline: Deadline) -> FsState:
        # A token per hold: the state a loop wrote while obeying the previous hold
        # still says "held" for up to one write after that hold was lifted, and
        # taken for this one it let a check (or an injection) race the loop.
        token = secrets.token_hex(4)
        shell.succeed(f"echo {token} > {self.dir}/hold")
        while True:
            state = self.state(shell)
            if state.held == token:
                return state
            status, _ = shell.execute(f"test -e {self.dir}/stopped")
            if status == 0:
                return state
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the fs load on {self.disk} "
                                  f"({self.device}) did not pause (a write or fsync is "
                                  f"stuck at {state.written} files)")
            time.sleep(0.05)

    def after_hop(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        """Hold the writer, then check every file it wrote (read from the disk)."""
        t0 = time.monotonic()
        before = self.last.written if self.last is not None else 0
        while True:  # progress first: a writer stuck since the hop is a stall
            state = self.state(shell)
            if state.written > before:
                break
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the fs load on {self.disk} "
                                  f"({self.device}) is stuck at {state.written} files")
            time.sleep(0.05)
        state = self._hold(shell, deadline)
        try:
            verified = self._verify(shell, state, hop)
        finally:
            shell.succeed(f"rm -f {self.dir}/hold")
        self.last = state
        return Verified(bytes=verified[1], files=verified[0], units=verified[0],
                        seconds=time.monotonic() - t0)

    def expected(self, written: int) -> dict[int, int]:
        """{file k: generation} after `written` file writes."""
        return {i % FILES: i // FILES for i in range(max(0, written - FILES), written)}

    def _verify(self, shell: Shell, state: FsState, hop: int) -> tuple[int, int]:
        if state.ioerr:
            raise DataMismatch(f"{self.name}: {state.ioerr} file write(s) or fsync(s) failed "
                               f"in the guest", disk=self.name, block=None)
        expected = self.expected(state.written)
        for i in range(self.last.written if self.last else 0, state.written):
            self._made_after[i % FILES] = hop - 1
        files = " ".join(f"{self.mount}/f{k}" for k in sorted(expected))
        # md5sum exits 1 for a missing file: that is lost data, not a dead SSH.
        _, out = shell.execute(f"sync; echo 3 > /proc/sys/vm/drop_caches; md5sum {files} 2>&1",
                               timeout=120)
        got = {line.split()[1].rsplit("/", 1)[-1]: line.split()[0]
               for line in out.splitlines() if len(line.split()) == 2}
        size = 0
        for k in sorted(expected):
            want = file_bytes(self.disk, self.seed, k, expected[k])
            size += len(want)
            path = f"{self.mount}/f{k}"
            # GNU: "md5sum: /mnt/x/f3: No such file ...", busybox: "... can't open '/mnt/x/f3'"
            said = next((line for line in out.splitlines() if "No such file" in line
                         and re.search(rf"/f{k}\b", line)), None)
            if said is not None:
                raise DataLost(f"{self.name} ({self.device}): file {path} (generation "
                               f"{expected[k]}, written after hop "
                               f"{self._made_after.get(k, hop - 1)}, checked after hop {hop}) "
                               f"is missing: {said}", disk=self.name, block=None, tail=out)
            if got.get(f"f{k}") != hashlib.md5(want).hexdigest():
                raise self._mismatch(shell, path, k, expected[k], want,
                                     got.get(f"f{k}"), hop)
        return len(expected), size

    def _mismatch(self, shell: Shell, path: str, k: int, gen: int, want: bytes,
                  md5: str | None, hop: int) -> DataMismatch:
        from harness.guest.functions import read_file

        try:
            data = read_file(shell, path)
        except HarnessError as exc:
            return DataMismatch(f"{self.name}: {path} cannot be read back: {exc.message}",
                                disk=self.name, block=None)
        if data == want:
            return DataMismatch(f"{self.name}: md5sum of {path} printed {md5 or 'nothing'}, "
                                "but the file reads back right now (a read error?)",
                                disk=self.name, block=None)
        offset = next((n for n, (a, b) in enumerate(zip(data, want)) if a != b),
                      min(len(data), len(want)))
        start = offset - offset % LINE
        return DataMismatch(
            f"{self.name} ({self.device}): file {path} (generation {gen}, written after hop "
            f"{self._made_after.get(k, hop - 1)}, checked after hop {hop}) differs from "
            f"offset {offset} ({len(data)} bytes, expected {len(want)}): found "
            f"{data[start:start + LINE - 1]!r}, expected {want[start:start + LINE - 1]!r}",
            disk=self.name, block=offset)

    def finish(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        """Stop the writer, check every file, unmount, and fsck on the host."""
        shell.succeed(f"touch {self.dir}/stop")
        while True:
            status, _ = shell.execute(f"test -e {self.dir}/stopped")
            if status == 0:
                break
            if deadline.expired():
                raise DeadlineExceeded(f"{deadline.describe()}: the fs load on {self.disk} "
                                       "did not stop")
            time.sleep(0.05)
        t0 = time.monotonic()
        state = self.state(shell)
        files, size = self._verify(shell, state, hop + 1)
        self.last = state
        shell.succeed(f"umount {self.mount} && sync", timeout=60)
        if self.host_disk is not None:
            self.fsck = host_fsck(self.host_disk)
            if self.fsck is not None:
                raise DataMismatch(f"{self.name}: the file system on {self.device} is not clean "
                                   f"after the run: {self.fsck.splitlines()[0]}",
                                   disk=self.name, block=None, tail=self.fsck)
        return Verified(bytes=size, files=files, units=files, seconds=time.monotonic() - t0)

    def summary(self) -> dict[str, object]:
        return {"files_written": self.last.written if self.last else 0,
                "fsck": "clean" if self.host_disk is not None and self.fsck is None
                else (self.fsck or "not run")}
