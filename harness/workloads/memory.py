"""Verifiable guest memory load: a working set whose every page is checked, every sweep.

Why: a migration that loses a dirty page leaves the destination with stale
memory, and a guest that runs on stale memory crashes later for no visible
reason (7.2.22 under TCG, see the facts page).  The guest program
(`harness/guest/tools/memcheck.c`, freestanding, built here with gcc and
copied in over SSH) keeps two regions A and B; sweep g checks that page i of
both still holds generation g-1 before writing g, so every write of every
generation is read back before it is overwritten.  A mismatch is printed at
level 0 on /dev/kmsg (so the serial console shows it) and described in the
program's state file: sweep, page, region, virtual and guest-physical address,
expected and found generation, and how many pages differed.

After each hop the host waits for one complete sweep that started after the
hop: then every page of the working set has been checked on the destination.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.deadline import Deadline
from harness.errors import HarnessError, UserError
from harness.guest.functions import put_file
from harness.paths import cache_root
from harness.protocols import Shell
from harness.workloads.disk import DataMismatch, LoadStalled, Verified

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "tools" / "memcheck.c"
GUEST_DIR = "/tmp/pcih-mem"
PAGE = 4096
CFLAGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
          "-fno-pie", "-no-pie", "-fno-asynchronous-unwind-tables", "-fno-builtin",
          "-Wl,--gc-sections", "-s")


def build_checker() -> Path:
    """The checker binary, compiled once per source version into the cache."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out_dir = cache_root() / "tools"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"memcheck-{key}"
    with FileLock(str(out_dir / "memcheck.lock")):
        if target.exists():
            return target
        gcc = shutil.which("gcc")
        if gcc is None:
            raise UserError("--load memory needs gcc on the host to build its guest checker "
                            f"({SOURCE.name})",
                            fix="install gcc and libc6-dev (bin/bootstrap.sh does it)")
        tmp = target.with_suffix(".tmp")
        proc = subprocess.run([gcc, *CFLAGS, "-o", str(tmp), str(SOURCE)],
                              capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"gcc could not build {SOURCE}", tail=proc.stderr[-3000:])
        tmp.rename(target)
    return target


@dataclass(frozen=True)
class MemState:
    sweep: int       # the sweep in progress
    done: int        # sweeps completed
    checked: int     # page checks made (A and B count separately)
    bad: int         # page checks that found the wrong contents
    pages: int       # pages per region
    first_bad: str   # "sweep:S,page:P,region:R,va:..,pa:..,expected_gen:..,..." or "-"
    injected: str = ""
    swept: int = 0   # page checks the last completed sweep made (A and B count apart)

    @classmethod
    def parse(cls, line: str) -> MemState:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        try:
            return cls(int(fields["sweep"]), int(fields["done"]), int(fields["checked"]),
                       int(fields["bad"]), int(fields["pages"]), fields.get("first_bad", "-"),
                       fields.get("injected", ""), int(fields.get("swept", "0")))
        except (KeyError, ValueError):
            raise HarnessError(f"unreadable memory checker state {line!r}") from None

    def first_bad_fields(self) -> dict[str, str]:
        return dict(item.split(":", 1) for item in self.first_bad.split(",") if ":" in item)


class MemoryMismatch(DataMismatch):
    """A page of the checker's working set held the wrong generation."""


class MemoryLoad:
    """The checker running in the guest, checked by the host after every hop."""

    kind = "memory"
    name = "memory"

    def __init__(self, mib: int, rate_mib_s: int):
        # rate: MiB of pages written per second, A and B together (0: flat out)
        if mib < 2:
            raise UserError(f"--memory-mib {mib}: the working set needs at least 2 MiB "
                            "(two regions)", fix="give --memory-mib 2 or more")
        self.pages = mib * 1024 * 1024 // PAGE // 2     # per region
        self.mib = mib
        self.rate_mib_s = rate_mib_s
        self.last: MemState | None = None

    def start(self, shell: Shell) -> None:
        binary = build_checker()
        shell.succeed(f"mkdir -p {GUEST_DIR} && rm -f {GUEST_DIR}/stop {GUEST_DIR}/state")
        put_file(shell, f"{GUEST_DIR}/memcheck", binary.read_bytes(), "755")
        rate_pages = self.rate_mib_s * 1024 * 1024 // PAGE
        # (the checker sets its own nice 19, like the disk loops)
        shell.succeed(f"setsid {GUEST_DIR}/memcheck {GUEST_DIR} {self.pages} {rate_pages} "
                      f"</dev/null >{GUEST_DIR}/out 2>&1 & echo $! > {GUEST_DIR}/pid")

    def state(self, shell: Shell) -> MemState:
        status, out = shell.execute(f"cat {GUEST_DIR}/state")
        if status != 0:
            _, why = shell.execute(f"cat {GUEST_DIR}/out; pidof memcheck || echo not running")
            raise HarnessError("the memory checker has no state file", tail=why)
        return MemState.parse(out.strip())

    def wait_started(self, shell: Shell, deadline: Deadline) -> MemState:
        """Wait for the first complete sweep (the regions are resident and checked)."""
        while True:
            try:
                state = self.state(shell)
            except HarnessError:
                state = None
            if state is not None and state.done >= 1:
                self.last = state
                return state
            gone, _ = shell.execute(f"kill -0 $(cat {GUEST_DIR}/pid)")
            if gone != 0 or deadline.expired():
                _, out = shell.execute(f"cat {GUEST_DIR}/out {GUEST_DIR}/state; free -m")
                why = "is not running" if gone != 0 else "never completed a sweep"
                raise HarnessError(f"the memory checker ({self.mib} MiB) {why}"
                                   + (f" ({deadline.describe()})" if gone == 0 else ""),
                                   tail=out)
            time.sleep(0.1)

    def check(self, state: MemState, hop: int) -> None:
        if state.bad == 0:
            return
        f = state.first_bad_fields()
        raise MemoryMismatch(
            f"memory: {state.bad} page check(s) found stale contents; first: page "
            f"{f.get('page', '?')} of region {f.get('region', '?')} (virtual "
            f"{f.get('va', '?')}, guest-physical {f.get('pa', '?')}) in sweep "
            f"{f.get('sweep', '?')}: expected generation {f.get('expected_gen', '?')}, found "
            f"A={f.get('found_gen_A', '?')} B={f.get('found_gen_B', '?')} (words "
            f"{f.get('found_words', '?')}), seen in the checks after hop {hop}",
            disk="memory", block=int(f["page"]) if f.get("page", "").isdigit() else None,
            tail=f"checker state: {state}")

    def make_room(self, shell: Shell) -> bool:
        """Nothing to do: this load never waits for the host between checks."""
        return False

    def inject(self, shell: Shell) -> str:
        """Skip the writes of one page (both copies) in the next sweep: a lost write."""
        page = self.pages // 3
        shell.succeed(f"echo {page} > {GUEST_DIR}/inject")
        # Back once the checker took it (its state names the sweep that skips the
        # page): a check that waits for a sweep begun after a hop that follows then
        # always covers the sweep that finds the page stale.
        deadline = Deadline(30, "the memory checker taking the injection")
        while not self.state(shell).injected.startswith(f"{page}@"):
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the memory checker did not take "
                                  f"the injection (page {page})")
            time.sleep(0.05)
        return f"memory: writes of page {page} (regions A and B) skipped in the next sweep"

    def after_hop(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        """Wait for a sweep that started after the hop to complete: every page of the
        working set has then been checked on this destination."""
        t0 = time.monotonic()
        first = self.state(shell)
        before = self.last.checked if self.last is not None else 0
        state = first
        while True:
            self.check(state, hop)
            if state.done > first.sweep:
                break
            if deadline.expired():
                raise LoadStalled(f"{deadline.describe()}: the memory checker did not finish "
                                  f"a sweep after hop {hop} (in sweep {state.sweep}, "
                                  f"{state.done} done; it was in sweep {first.sweep})")
            time.sleep(0.05)
            state = self.state(shell)
        self.last = state
        # bytes: what the last completed sweep (one that began after the hop) read
        # back, as the checker counted it: the working set when it checked every
        # page; units: the page checks made since the previous check
        return Verified(bytes=state.swept * PAGE, units=state.checked - before,
                        seconds=time.monotonic() - t0)

    def finish(self, shell: Shell, hop: int, deadline: Deadline) -> Verified:
        verified = self.after_hop(shell, hop, deadline)
        shell.succeed(f"touch {GUEST_DIR}/stop")
        return verified

    def summary(self) -> dict[str, object]:
        s = self.last
        return {} if s is None else {"sweeps": s.done, "pages_checked": s.checked,
                                     "bad": s.bad, "pages_per_region": s.pages}
