"""What one cold boot from AHCI went through, read from the firmware log and the console.

Pure parsing and arithmetic (no QEMU): the boot-stress scenario feeds it the
text it saw, the unit tests feed it recorded and broken logs.

The firmware phase is judged from SeaBIOS's debug console (I/O port 0x402):
SeaBIOS prints "AHCI/0: registering: ..." for each disk its AHCI driver
found, "Booting from Hard Disk..." when it tries one, then either "Booting
from 0000:7c00" (it read the boot sector and jumps to it) or "Boot failed:
..." and, with nothing left to try, "No bootable device." -- after which it
waits and retries forever.  The serial console stays silent in that case, so
only this log can say within seconds that a boot is lost.

UEFI firmware (OVMF) says the same on the serial console: "BdsDxe: loading
Boot0001 "UEFI QEMU HARDDISK ..." from PciRoot(0x0)/Pci(0x1F,0x2)/Sata(...)",
then "BdsDxe: starting Boot0001 ..." when it runs the disk's boot loader, or
"failed to load" and the next boot option (the EFI shell: the disk was not
booted).  Debian's OVMF build prints nothing on the debug port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.guest.console import KERNEL_TROUBLE
from harness.stats import latency

_AHCI_DISK = re.compile(r"^AHCI/\d+: registering: \"?(.*?)\"?$", re.MULTILINE)
_HANDOFF = re.compile(r"^Booting from 0000:7c00", re.MULTILINE)
_BOOT_FAILED = re.compile(r"^(Boot failed: .*|No bootable device\.?.*)$", re.MULTILINE)
_NO_DEVICE = re.compile(r"^No bootable device", re.MULTILINE)
#: SeaBIOS's AHCI driver waited out its 32 s request timeout (a command whose
#: completion interrupt never came): the boot goes on, 32 s late.
_AHCI_TIMEOUT = re.compile(r"^WARNING - Timeout at ahci_\w+:\d+!?", re.MULTILINE)
_UEFI_OPTION = re.compile(r"BdsDxe: (loading|starting|failed to load) Boot[0-9A-Fa-f]{4} "
                          r"\"([^\"]*)\" from (\S+)(.*)")
_UEFI_NONE = re.compile(r"No bootable option or device was found")


@dataclass(frozen=True)
class FirmwareView:
    """What SeaBIOS's log says so far."""

    ahci_disks: tuple[str, ...]   # "AHCI/0: QEMU HARDDISK ATA-7 Hard-Disk (97 MiBytes)"
    handed_off: bool              # the boot sector was read and jumped to
    failures: tuple[str, ...]     # "Boot failed: not a bootable disk", "No bootable device."
    gave_up: bool                 # "No bootable device": SeaBIOS retries forever from here
    stalls: tuple[str, ...] = ()  # "WARNING - Timeout at ahci_command:153!"

    def stopped(self) -> str | None:
        """Why the firmware will not boot this disk, or None while it still might."""
        if not self.gave_up:
            return None
        found = ("it found " + "; ".join(self.ahci_disks)) if self.ahci_disks \
            else "it found no AHCI disk at all"
        return f"the firmware could not boot the disk ({'; '.join(self.failures)}); {found}"


def read_firmware_log(text: str) -> FirmwareView:
    # Only the last boot attempt counts: after a reset SeaBIOS logs from the top.
    return FirmwareView(
        ahci_disks=tuple(m.group(1).strip() for m in _AHCI_DISK.finditer(text)),
        handed_off=bool(_HANDOFF.search(text)),
        failures=tuple(dict.fromkeys(m.group(1).strip() for m in _BOOT_FAILED.finditer(text))),
        gave_up=bool(_NO_DEVICE.search(text)),
        stalls=tuple(m.group(0) for m in _AHCI_TIMEOUT.finditer(text)))


def read_uefi_console(text: str) -> FirmwareView:
    """What OVMF's boot manager said on the serial console so far: the boot
    options on an AHCI port (a `Sata(...)` node in the device path), whether
    it started one, and whether it moved on to something else (the EFI shell,
    the network) or found nothing: the disk was not booted."""
    disks: list[str] = []
    failures: list[str] = []
    handed_off = gave_up = False
    for match in _UEFI_OPTION.finditer(text.replace("\r", "")):
        verb, name, path = match.group(1), match.group(2).strip(), match.group(3)
        on_ahci = "/Sata(" in path
        if on_ahci and f"{name} at {path}" not in disks:
            disks.append(f"{name} at {path}")
        if verb == "failed to load":
            failures.append(f"failed to load {name!r} from {path}{match.group(4).rstrip()}")
        elif verb == "starting":
            if on_ahci:
                handed_off = True
            else:
                gave_up = True
                failures.append(f"it started {name!r} ({path}) instead")
    if _UEFI_NONE.search(text):
        gave_up = True
        failures.append("No bootable option or device was found")
    return FirmwareView(ahci_disks=tuple(disks), handed_off=handed_off,
                        failures=tuple(dict.fromkeys(failures)),
                        gave_up=gave_up and not handed_off)


@dataclass(frozen=True)
class Phase:
    """One step of a boot: its name, what reaching its end proves, and the console
    marker that ends it (None: judged elsewhere, from the firmware log or SSH)."""

    name: str
    proves: str
    marker: str | None
    seconds: float  # deadline, TCG seconds (scaled by the run's timeout factor)


#: The AHCI-root guest (guest-images/debian12-ahci): markers its syslinux.cfg,
#: initrd.sh and init.sh print.  Markers that carry numbers include the line
#: end: pexpect matches as early as it can, so without it "HARNESS-FSCK 0 4"
#: could be taken from the first half of "HARNESS-FSCK 0 4.77".
AHCI_ROOT_PHASES: tuple[Phase, ...] = (
    Phase("firmware", "the firmware found the AHCI disk and started its boot sector", None, 20),
    Phase("bootloader", "syslinux runs (read from the FAT partition through the BIOS)",
          r"SYSLINUX \d\S*", 20),
    Phase("load", "syslinux read the kernel and the initramfs (BIOS disk calls on AHCI)",
          r"Loading /initrd\.img\.\.\. ?ok", 60),
    Phase("kernel", "the kernel decompressed itself, booted and runs the initramfs",
          r"HARNESS-KERNEL [\d.]+\r?\n", 40),
    Phase("fsck", "e2fsck -f -n of the root partition finished",
          r"HARNESS-FSCK -?\d+ [\d.]+\r?\n", 40),
    Phase("root", "the root file system is mounted", r"HARNESS-ROOT \S+ [\d.]+\r?\n", 20),
    Phase("userspace", "init on the root ran and sshd listens", r"HARNESS-READY [\d.]+\r?\n", 40),
    Phase("ssh", "SSH answers and / is mounted read-write and takes writes", None, 40),
)


#: The same disk booted by UEFI firmware (OVMF): GRUB from EFI/BOOT/BOOTX64.EFI
#: (harness/guest/diskimage.py writes its markers) instead of syslinux.
UEFI_AHCI_ROOT_PHASES: tuple[Phase, ...] = (
    Phase("firmware", "the UEFI firmware found the AHCI disk and started its boot loader",
          None, 30),
    Phase("bootloader", "GRUB runs (read from the FAT partition through the firmware's AHCI "
          "driver)", r"HARNESS-GRUB started\r?\n", 20),
    Phase("load", "GRUB read the kernel and the initramfs (UEFI block I/O on AHCI)",
          r"HARNESS-GRUB loaded\r?\n", 60),
    *AHCI_ROOT_PHASES[3:],
)


def ahci_root_phases(uefi: bool) -> tuple[Phase, ...]:
    return UEFI_AHCI_ROOT_PHASES if uefi else AHCI_ROOT_PHASES


def past_a_firmware_stall(phases: tuple[Phase, ...], seconds: float = 60.0) -> tuple[Phase, ...]:
    """The phases with room in the firmware phase for a stall that is a known gap (SeaBIOS
    before 1.16.3 on QEMU 10 waits out a 32 s AHCI timeout: ahci-tfes-only-seabios-stall),
    for checks about later phases; the stall itself is judged with the usual deadline."""
    first, *rest = phases
    return (Phase(first.name, first.proves, first.marker, max(first.seconds, seconds)), *rest)


def user_disk_phases(ready: str, ready_seconds: float, uefi: bool = False
                     ) -> tuple[Phase, ...]:
    """A user's own disk: the firmware, then the console matching their regex."""
    return (ahci_root_phases(uefi)[0],
            Phase("ready", f"the serial console matched {ready!r}", ready, ready_seconds))


#: Console lines only a boot has: the guest's own error marker, the boot loader
#: failing to read its files (SYSLINUX, and GRUB under UEFI).
BOOT_ERROR = (r"HARNESS-ERROR |Boot error|Could not find kernel image|Loading \S+\.\.\. ?failed|"
              r"error: (?:disk|file) `[^']*' not found|error: you need to load the kernel first")

#: Whole console lines that end a boot on the spot whatever phase it is in: the
#: boot's own errors, and every kind of kernel trouble the other console scans
#: know (guest/console.py's TROUBLE_KINDS: one list, libata and file system
#: errors included).  The line's start and end are part of the pattern so that
#: a match carries the whole line ("irq 11: nobody cared ..."), not a piece of it.
STOP_LINE = re.compile(f"[^\r\n]*(?:{BOOT_ERROR}|{KERNEL_TROUBLE.pattern})[^\r\n]*\r?\n")


def check_marker(phase: str, text: str) -> str | None:
    """The problem a phase's marker reports, or None when it is fine."""
    fields = text.split()
    if phase == "fsck" and len(fields) >= 2 and fields[1] != "0":
        return f"e2fsck -f -n of the root partition exited with status {fields[1]}"
    if phase == "root" and len(fields) >= 2 and "rw" not in fields[1].split(","):
        return f"the root file system is mounted {fields[1]!r}, not read-write"
    return None


_TRAILING_SECONDS = re.compile(r"\s([\d]+\.[\d]+)\s*$")


def guest_uptime(marker_text: str) -> float | None:
    """The guest's /proc/uptime a HARNESS-* marker ends with, None for other markers.

    Next to the host's phase times it splits a phase: the guest clock starts
    with the kernel, so the host time at `kernel` minus the guest's uptime
    there is what came before (firmware, boot loader, decompression).
    """
    match = _TRAILING_SECONDS.search(marker_text)
    return float(match.group(1)) if match and marker_text.startswith("HARNESS-") else None


def root_mount_problem(proc_mounts: str) -> str | None:
    """From the guest's /proc/mounts: None when / is mounted read-write."""
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/" and fields[0] != "rootfs":
            if "rw" in fields[3].split(","):
                return None
            return f"/ is mounted {fields[3]!r} ({fields[0]}), not read-write"
    return "/proc/mounts has no entry for / "


_PCI_FUNCTION = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def root_controller(sysfs_path: str) -> str | None:
    """The PCI function (0000:00:1f.2) a block device hangs off, from its
    resolved /sys/class/block path: the last PCI address before `ata`."""
    found = None
    for part in sysfs_path.split("/"):
        if _PCI_FUNCTION.match(part):
            found = part
    return found


def root_on_ahci_problem(sysfs_path: str, driver: str) -> str | None:
    """None when the root's block device sits on a function bound to `ahci`."""
    function = root_controller(sysfs_path)
    if function is None:
        return f"the root's block device {sysfs_path} is on no PCI function"
    if "/ata" not in sysfs_path or driver != "ahci":
        return (f"the root's block device sits on {function} (driver {driver or 'none'!r}, "
                f"{sysfs_path}), not on an AHCI port")
    return None


@dataclass
class BootRecord:
    """One boot: when each phase ended (seconds since QEMU was spawned)."""

    number: int
    ended_at: dict[str, float] = field(default_factory=dict)
    guest_uptime: dict[str, float] = field(default_factory=dict)  # phase -> guest clock at its end
    stopped_in: str | None = None
    reason: str | None = None
    known_gap: str | None = None  # the known gap (harness/qemu/known.py) this stop is
    console_tail: str | None = None
    firmware_tail: str | None = None
    artifacts: str | None = None

    @property
    def ok(self) -> bool:
        return self.stopped_in is None

    def durations(self) -> dict[str, float]:
        """Seconds each finished phase took (its end minus the previous end)."""
        out: dict[str, float] = {}
        previous = 0.0
        for name, at in self.ended_at.items():
            out[name] = round(at - previous, 3)
            previous = at
        return out

    def total(self) -> float | None:
        return round(max(self.ended_at.values()), 3) if self.ok and self.ended_at else None

    def as_dict(self) -> dict[str, Any]:
        return {"boot": self.number, "ok": self.ok, "phases": self.durations(),
                "total_s": self.total(), "guest_uptime_s": dict(self.guest_uptime),
                "stopped_in": self.stopped_in, "reason": self.reason,
                "known_gap": self.known_gap,
                "console_tail": self.console_tail, "firmware_tail": self.firmware_tail,
                "artifacts": self.artifacts}

    def describe_failure(self) -> str:
        where = f"; artifacts in {self.artifacts}" if self.artifacts else ""
        return f"boot {self.number} stopped in the {self.stopped_in} phase: {self.reason}{where}"


def phase_latencies(records: Sequence[BootRecord], phases: Sequence[Phase]
                    ) -> dict[str, dict[str, float | None]]:
    """Per phase {"p50": s, "p95": s} over the boots that completed."""
    done = [r.durations() for r in records if r.ok]
    return {p.name: latency([d[p.name] for d in done if p.name in d], 3) for p in phases}


def summary(records: Sequence[BootRecord], phases: Sequence[Phase],
            extra: Mapping[str, Any]) -> dict[str, Any]:
    """The boot-stress result object (--json prints it; the nightly stores it).

    `boots` counts completed boots (an integer); the per-boot records are under
    `boot_records`; `failures` is always a list of one-paragraph strings.
    """
    completed = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    return {
        "ok": not failed and bool(completed),
        "boots": len(completed),
        "attempted": len(records),
        **extra,
        "phases": phase_latencies(records, phases),
        "total_s": latency([t for r in completed if (t := r.total()) is not None], 3),
        "failures": [r.describe_failure() for r in failed],
        "boot_records": [r.as_dict() for r in records],
    }
