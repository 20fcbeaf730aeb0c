"""Choose the accelerator: KVM when a real guest boots under it, else TCG.

`/dev/kvm` existing proves nothing (nested virtualization can leave guests
hanging with no output), so `auto` boots the guest kernel under KVM with a
short deadline and falls back to TCG when it prints nothing.  The verdict is
cached per host boot and QEMU binary, so only the first command after a
reboot or a QEMU update pays for the probe; several processes probing at once
share one probe through a file lock.

The probe boots whatever kernel it is handed (`ProbeBoot`): this layer knows
QEMU, not the guest images; the factory passes the guest's kernel in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import AccelUnusable, UserError
from harness.paths import cache_root
from harness.qemu.binary import QemuBinary

PROBE_SECONDS = 10.0  # KVM reaches init in about a second; TCG needs ~2 s of its own

#: Deadline factor per accelerator.  Deadlines are written in TCG seconds;
#: under KVM a hung guest is noticed sooner.
TIMEOUT_FACTOR = {"tcg": 1.0, "kvm": 0.5}


@dataclass(frozen=True)
class Accel:
    name: str           # "kvm" | "tcg"
    reason: str         # why this one: shown once per run

    @property
    def timeout_factor(self) -> float:
        return TIMEOUT_FACTOR[self.name]


@dataclass(frozen=True)
class ProbeBoot:
    """A kernel the KVM probe boots: it must print `ready_marker` on the serial
    console once its init runs.  `key` names it in the cached verdict."""

    kernel: Path
    initrd: Path
    cmdline: str
    ready_marker: str
    key: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(binary: QemuBinary, boot: ProbeBoot) -> tuple[bool, str]:
    """Boot `boot` under KVM; True when init starts within the deadline."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    with tempfile.TemporaryDirectory(prefix="pcih-kvm-") as tmp:
        log = Path(tmp) / "console.log"
        argv = [str(binary.path), "-accel", "kvm", "-cpu", "max", "-m", "256", "-nodefaults",
                "-no-user-config", "-display", "none", "-machine", "q35",
                "-kernel", str(boot.kernel), "-initrd", str(boot.initrd),
                "-append", boot.cmdline, "-serial", f"file:{log}"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            while time.monotonic() - started < PROBE_SECONDS:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    first = err.strip().splitlines()[0] if err.strip() else f"status {proc.returncode}"
                    return False, f"QEMU fails under KVM ({first[:200]})"
                if log.exists() and boot.ready_marker in log.read_text(errors="replace"):
                    return True, f"a guest booted under KVM in {time.monotonic() - started:.1f} s"
                time.sleep(0.1)
            return False, (f"/dev/kvm exists but a guest printed nothing within {PROBE_SECONDS:.0f} s "
                           "under KVM (nested virtualization?)")
        finally:
            proc.kill()
            proc.wait()


def _cached_probe(binary: QemuBinary, boot: ProbeBoot) -> tuple[bool, str]:
    directory = cache_root() / "accel"
    directory.mkdir(parents=True, exist_ok=True)
    key = f"{_boot_id()}|{binary.identity()}|{boot.key}"
    path = directory / "kvm-probe.json"
    with FileLock(str(directory / "kvm-probe.lock")):
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return bool(cached["usable"]), str(cached["reason"]) + " (cached verdict)"
        except (OSError, ValueError, KeyError):
            pass
        usable, reason = probe_kvm(binary, boot)
        reason = " ".join(reason.split())  # one line: it is shown as one
        path.write_text(json.dumps({"key": key, "usable": usable, "reason": reason}))
        return usable, reason


def resolve_accel(requested: str, binary: QemuBinary, boot: ProbeBoot) -> Accel:
    """Turn --accel auto|kvm|tcg into the accelerator guests will use."""
    if requested == "tcg":
        return Accel("tcg", "TCG as requested")
    if requested not in ("auto", "kvm"):
        raise UserError(f"unknown accelerator {requested!r}", fix="use --accel auto, kvm or tcg")
    usable, reason = _cached_probe(binary, boot)
    if usable:
        return Accel("kvm", reason)
    if requested == "kvm":
        raise AccelUnusable(f"KVM is unusable here: {reason}",
                            fix="use --accel tcg (or auto, which falls back to TCG)")
    return Accel("tcg", f"KVM unusable ({reason}); using TCG")


def announce(accel: Accel) -> None:
    """The one line that says which accelerator a run uses and why."""
    print(f"pci-harness: accelerator {accel.name}: {accel.reason}", file=sys.stderr, flush=True)
