"""Booted-guest snapshots: boot once, then start every later guest from RAM.

Under TCG a cold boot costs ~3 s, restoring a saved idle guest a fraction of
that.  After the first cold boot of a given (QEMU binary, accelerator,
firmware, CPU model, guest image, topology, kernel arguments, memory, extra
arguments) the idle guest -- booted, sshd listening, nobody logged in -- is
migrated into a file in the cache (`exec:cat > FILE`: QEMU 7.2 has no `file:`
URI).  Later guests with the same key start with `-incoming defer`, load the
file, and are fixed up over the serial console before SSH: clock set to now,
host randomness mixed into the pool, the run's own MAC on the management NIC.
The SSH key needs no fix-up: the guest reads authorized_keys from fw_cfg,
which the *restoring* QEMU serves.  Scratch disks are created fresh for every
guest; they are blank, exactly as the saved guest last saw its own.

Several xdist workers: one builds under a file lock, the others wait for it.
A snapshot that fails to restore (stale, truncated, corrupt) is deleted and
the guest boots cold, which rebuilds it: a bad snapshot never fails a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.deadline import Deadline, timeout_scale
from harness.errors import DeadlineExceeded, HarnessError
from harness.guest.running import CPU_MODEL, Guest, LaunchPlan
from harness.paths import cache_root
from harness.progress import Progress
from harness.topology.render import RenderedMachine

#: Bump when what is saved, or how it is restored, changes.
SNAPSHOT_FORMAT = "3"
SAVE_SECONDS = 60.0
#: The cache keeps at most this much (PCI_HARNESS_SNAPSHOT_CACHE_GB overrides):
#: every new QEMU build or topology adds ~100 MiB snapshots, and a nightly of
#: QEMU master would otherwise fill the disk.
DEFAULT_CACHE_BYTES = 8 << 30
#: A snapshot restored or saved this recently is never evicted (a running suite
#: that needs more than the limit exceeds it rather than thrash).
KEEP_RECENT_SECONDS = 3600.0
RESTORE_SECONDS = 30.0
LOCK_WAIT_SECONDS = 180.0



def firmware_identity(spec: str) -> str:
    """The firmware spec, and for a file its size and mtime: a new image is a new key."""
    from harness.qemu.firmware import spec_files

    out = spec
    for path in spec_files(spec):
        try:
            st = path.stat()
        except OSError:
            continue
        out += f"|{path}:{st.st_size}:{st.st_mtime_ns}"
    return out


def snapshot_key(plan: LaunchPlan, rendered: RenderedMachine) -> str:
    """Everything that changes the device set, firmware or guest software: the
    plan's QEMU, accelerator, firmware and image, and what the topology rendered
    to (RenderedMachine.key_material, per-guest parts as tokens) -- the very
    rendering the guest runs, not a second one."""
    parts = {
        "format": SNAPSHOT_FORMAT,
        "qemu": plan.binary.identity(),
        "accel": plan.accel.name,
        "firmware": firmware_identity(plan.firmware),
        "cpu": CPU_MODEL,
        "image": plan.image.key,
        "cmdline": plan.image.cmdline_base,
        # Derived from the topology (and the driver table: guest modules, device
        # properties), with memory, migrating SSH forward and -machine options.
        "rendered": list(rendered.key_material),
        "kernel_args": list(plan.kernel_args),
        "extra_args": list(plan.extra_args),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class SnapshotFile:
    key: str
    path: Path       # the migration stream
    meta: Path       # JSON: key, size, when it was saved and how long that took

    def usable(self) -> bool:
        try:
            meta = json.loads(self.meta.read_text())
            return bool(meta.get("key") == self.key
                        and self.path.stat().st_size == meta.get("size"))
        except (OSError, ValueError):
            return False

    def discard(self) -> None:
        for p in (self.path, self.meta):
            p.unlink(missing_ok=True)


class SnapshotCache:
    def __init__(self, progress: Progress, root: Path | None = None):
        self.root = root or cache_root() / "snapshots"
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress

    def entry(self, plan: LaunchPlan, rendered: RenderedMachine) -> SnapshotFile:
        key = snapshot_key(plan, rendered)
        return SnapshotFile(key, self.root / f"{key}.mig", self.root / f"{key}.json")

    def launch(self, plan: LaunchPlan, artifacts: Path, name: str) -> Guest:
        """A ready guest: restored when a snapshot exists, else cold (saving one)."""
        guest = Guest(plan, artifacts, name=name)  # rendered here, once
        if not plan.boot_guest:
            return guest.launch()
        snap = self.entry(plan, guest.rendered)
        if not snap.usable():
            try:
                with FileLock(str(snap.path) + ".lock",
                              timeout=LOCK_WAIT_SECONDS * timeout_scale()):
                    if not snap.usable():
                        self._build(plan, snap, artifacts.with_name(artifacts.name + ".snapshot-build"))
            except Timeout:
                self.progress("snapshot: another worker is still building it; booting cold")
                return guest.launch()
            except HarnessError as exc:
                # A guest that cannot be saved can still be booted: the test
                # decides, with the cold boot's own error if that fails too.
                self.progress(f"snapshot: could not save one ({exc.message}); booting cold")
                return guest.launch()
        try:
            restore(guest, snap)
        except HarnessError as exc:
            self.progress(f"snapshot {snap.key} did not restore ({exc.message}); "
                          "discarding it and booting cold")
            snap.discard()
            if artifacts.exists():  # keep what explains the failure, boot in a clean dir
                artifacts.rename(artifacts.with_name(artifacts.name + ".restore-failed"))
            return Guest(plan, artifacts, name=name).launch()
        try:
            os.utime(snap.meta)  # recently used: the last to be evicted
        except OSError:
            pass
        return guest

    def prune(self, limit: int | None = None, now: float | None = None) -> list[str]:
        """Evict least recently used snapshots until the cache fits `limit` bytes.

        "Used" is the metadata file's mtime (saved, or touched on every
        restore).  Snapshots used within KEEP_RECENT_SECONDS stay; so do lock
        files (another worker may hold one).  Returns the evicted keys.
        """
        limit = cache_limit() if limit is None else limit
        now = time.time() if now is None else now
        for tmp in self.root.glob("*.tmp*"):  # a save that died half-way
            try:
                if now - tmp.stat().st_mtime > KEEP_RECENT_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
        entries: list[tuple[float, int, SnapshotFile]] = []
        for mig in self.root.glob("*.mig"):
            key = mig.stem
            snap = SnapshotFile(key, mig, self.root / f"{key}.json")
            try:
                size = mig.stat().st_size
                used = snap.meta.stat().st_mtime if snap.meta.exists() else mig.stat().st_mtime
            except OSError:
                continue
            entries.append((used, size, snap))
        total = sum(size for _, size, _ in entries)
        evicted = []
        for used, size, snap in sorted(entries, key=lambda e: e[0]):
            if total <= limit or now - used < KEEP_RECENT_SECONDS:
                break
            snap.discard()
            total -= size
            evicted.append(snap.key)
        if evicted:
            self.progress(f"snapshot cache: evicted {len(evicted)} least recently used "
                          f"(now {total >> 20} MiB, limit {limit >> 20} MiB)")
        return evicted

    def _build(self, plan: LaunchPlan, snap: SnapshotFile, artifacts: Path) -> None:
        self.progress(f"snapshot: cold boot to save {snap.key}")
        builder = Guest(plan, artifacts, name="snapshot-builder")
        if snapshot_key(plan, builder.rendered) != snap.key:  # a harness bug, not a QEMU one
            builder.shutdown()
            raise HarnessError("the snapshot builder renders another machine than the guest")
        try:
            builder.launch(wait_for_ssh=False)
            save(builder, snap)
        finally:
            builder.shutdown()
        shutil.rmtree(artifacts, ignore_errors=True)
        self.progress(f"snapshot: saved {snap.key} ({snap.path.stat().st_size >> 20} MiB)")
        self.prune()


def cache_limit() -> int:
    """Bytes the snapshot cache may hold: PCI_HARNESS_SNAPSHOT_CACHE_GB, else 8 GiB."""
    value = os.environ.get("PCI_HARNESS_SNAPSHOT_CACHE_GB")
    if not value:
        return DEFAULT_CACHE_BYTES
    try:
        return int(float(value) * (1 << 30))
    except ValueError:
        raise HarnessError(f"PCI_HARNESS_SNAPSHOT_CACHE_GB={value!r} is not a number",
                           fix="set it to the gigabytes the snapshot cache may use, "
                               "e.g. 8") from None


def save(guest: Guest, snap: SnapshotFile) -> None:
    """Migrate a ready, idle guest into the snapshot file (atomically)."""
    assert guest.qmp is not None
    tmp = snap.path.with_suffix(f".tmp{os.getpid()}")
    started = time.monotonic()
    qmp = guest.qmp
    # Uncapped bandwidth: the default 128 MiB/s cap alone costs ~0.5 s.
    qmp.execute("migrate-set-parameters", {"max-bandwidth": 64 << 30})
    qmp.execute("migrate", {"uri": f"exec:cat > {tmp}"})
    deadline = Deadline(SAVE_SECONDS, "saving the guest snapshot")
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            tmp.unlink(missing_ok=True)
            raise HarnessError(f"saving the snapshot failed: {info.get('error-desc', status)}")
        if deadline.expired():
            tmp.unlink(missing_ok=True)
            raise DeadlineExceeded(deadline.describe(), tail=json.dumps(info))
        time.sleep(0.02)
    size = tmp.stat().st_size
    os.replace(tmp, snap.path)
    snap.meta.write_text(json.dumps({"key": snap.key, "size": size, "saved_at": time.time(),
                                     "save_s": round(time.monotonic() - started, 3)}))


def restore(guest: Guest, snap: SnapshotFile) -> Guest:
    """Start a not-yet-launched guest from the snapshot and make it this run's guest."""
    try:
        guest.launch(incoming="defer")
        assert guest.qmp is not None and guest.console is not None
        guest.qmp.execute("migrate-incoming", {"uri": f"exec:cat {snap.path}"})
        deadline = Deadline(RESTORE_SECONDS, "restoring the guest snapshot")
        _wait_incoming(guest, deadline)
        guest.qmp.wait_event("RESUME", deadline)
        guest.timings.restored = True
        guest.timings.init_started = time.monotonic() - guest.started_at
        # Until this line runs the NIC still has the saved guest's MAC
        # (guest-images/debian12/restored.sh).
        seed = os.urandom(32).hex()
        guest.console.send_line(f"harness_restored {int(time.time())} {seed} {guest.mgmt_mac}")
        text = guest.console.expect(r"HARNESS-RESTORED [\d.]+", deadline)
        guest.timings.sshd_ready = time.monotonic() - guest.started_at
        guest.timings.guest_uptime_ready = float(text.split()[1])
        guest.connect(deadline, guest.started_at)
    except BaseException:
        guest.shutdown()
        raise
    return guest


def _wait_incoming(guest: Guest, deadline: Deadline) -> None:
    """Until the incoming migration completed; a corrupt stream fails it at once."""
    assert guest.qmp is not None and guest.process is not None
    while True:
        if not guest.process.alive():
            raise guest.process.exited_error("snapshot restore")
        status = guest.qmp.execute("query-migrate").get("status")
        if status == "completed":
            return
        if status == "failed":
            raise HarnessError("the snapshot stream did not load",
                               tail=guest.process.stderr_text()[-2000:])
        if deadline.expired():
            raise DeadlineExceeded(f"{deadline.describe()} (migration status {status})")
        time.sleep(0.01)
