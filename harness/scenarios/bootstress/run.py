"""Cold-boot a guest from AHCI again and again, timing and checking every phase.

Each boot is a fresh QEMU (never a snapshot) whose only boot device is an
ide-hd on an AHCI port, over a qcow2 overlay of its own, so the disk image is
never written.  The firmware phase is read from SeaBIOS's debug console
(bootphases.py), so a disk the firmware cannot boot is a verdict within
seconds; the later phases end at console markers (the AHCI-root guest) or at
the user's --ready regex (their own disk).

A stopped boot keeps its directory: console.log, firmware.log, qemu.cmdline,
qemu.stderr and a reproduce.sh that makes a fresh overlay of the same image
and boots it with the same command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError, QemuExited, UserError
from harness.guest.console import kernel_trouble
from harness.guest.running import FIRMWARE_LOG, Guest, LaunchPlan
from harness.plan import plan_firmware
from harness.progress import Progress
from harness.qemu.facts import parse_version
from harness.qemu.gap import KnownGap
from harness.qemu.known import gaps_for_firmware
from harness.qemu.machines import machine_facts
from harness.scenarios.bootstress.phases import (
    STOP_LINE,
    BootRecord,
    FirmwareView,
    Phase,
    check_marker,
    guest_uptime,
    read_firmware_log,
    read_uefi_console,
    root_controller,
    root_mount_problem,
    root_on_ahci_problem,
)
from harness.topology import Device, Topology, validate
from harness.topology.data import BootDisk

#: How often the firmware log is read while waiting: the firmware verdict
#: (and "the boot loader gave up") is at most this late.
POLL_S = 0.05


class BootStopped(HarnessError):
    """This boot cannot go on; the message says why (and the known gap it is, if any)."""

    def __init__(self, message: str, known_gap: str | None = None):
        super().__init__(message)
        self.known_gap = known_gap


def boot_topology(machine: str, image: Path, image_format: str,
                  behind_bridge: bool = False) -> Topology:
    """The boot-stress machine: the disk on AHCI port 0 as the only boot device.

    q35 uses its built-in AHCI (00:1f.2); pc has none, so it gets an
    `ich9-ahci` function.  --behind-bridge puts an `ich9-ahci` behind a
    pci-bridge (pc) or a pcie-root-port (q35): the firmware then has to
    number the secondary bus and open the bridge's windows before it can read
    the disk.
    """
    facts = machine_facts(machine)
    devices: tuple[Device, ...] = ()
    controller: str | None = None
    if behind_bridge:
        bridge = (Device(id="rp0", driver="pcie-root-port") if facts.root_ports
                  else Device(id="br0", driver="pci-bridge", props=(("chassis_nr", 1),)))
        devices = (bridge, Device(id="sata0", driver="ich9-ahci", bus=bridge.id))
        controller = "sata0"
    elif facts.builtin_ahci_bus is None:
        devices = (Device(id="sata0", driver="ich9-ahci"),)
        controller = "sata0"
    where = " behind a bridge" if behind_bridge else ""
    topology = Topology(machine=machine, devices=devices,
                        boot_disk=BootDisk(str(image), image_format, controller),
                        source=f"boot-stress --machine {machine}{where}")
    validate(topology)
    return topology


def image_format(path: Path) -> str:
    """The format qemu-img sees in a user's disk image (raw, qcow2, vmdk...)."""
    if not path.is_file():
        raise UserError(f"disk image {path} does not exist or is not a file",
                        fix="pass the path of a bootable disk image to --disk")
    proc = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"qemu-img cannot read {path}: {proc.stderr.strip()}",
                        fix="pass a disk image qemu-img understands (raw, qcow2, vmdk, ...)")
    return str(json.loads(proc.stdout)["format"])


@dataclass(frozen=True)
class BootStressOptions:
    phases: tuple[Phase, ...]
    boots: int | None = 1           # None: until a boot fails (or max_time_s)
    max_time_s: float | None = None
    keep_going: bool = False        # go on after a failed boot (each keeps its artifacts)
    keep_artifacts: bool = False    # keep the directories of boots that passed, too
    # Guest commands the ssh phase runs after its own checks (a user's smoke check);
    # the kernel log is scanned after them.
    ssh_commands: tuple[str, ...] = ()
    # False: a firmware stall (an AHCI request timeout in SeaBIOS's log) is waited out
    # and the boot judged on, for checks about later phases (phases.past_a_firmware_stall
    # gives the firmware phase the room); the stall itself is judged with the default.
    stalls_stop: bool = True


@dataclass
class BootStressRun:
    records: list[BootRecord] = field(default_factory=list)
    stopped_by: str = "boots"       # boots | failure | max-time | interrupted
    elapsed_s: float = 0.0


class BootStress:
    def __init__(self, plan: LaunchPlan, artifacts: Path, options: BootStressOptions,
                 progress: Progress):
        if plan.topology.boot_disk is None or not plan.firmware_log:
            raise HarnessError("boot-stress needs a boot disk and the firmware log in its plan")
        self.plan = plan
        self.artifacts = artifacts
        self.options = options
        self.progress = progress
        self.firmware = plan_firmware(plan)
        #: Known gaps of this QEMU with this firmware (harness/qemu/known.py).
        self.gaps: list[KnownGap] = gaps_for_firmware(
            parse_version(plan.binary.version), self.firmware.family, self.firmware.version,
            plan.binary.resolve_machine(plan.topology.machine))
        self._firmware_s: list[float] = []  # firmware phase of the boots that completed

    def run(self) -> BootStressRun:
        """Boot until the count, the time limit, a failure or Ctrl-C (the run so far)."""
        run = BootStressRun()
        started = time.monotonic()
        opts = self.options
        try:
            while True:
                if opts.boots is not None and len(run.records) >= opts.boots:
                    run.stopped_by = "boots"
                    break
                if opts.max_time_s is not None and time.monotonic() - started >= opts.max_time_s:
                    run.stopped_by = "max-time"
                    break
                record = self.boot_once(len(run.records) + 1)
                run.records.append(record)
                self._show(record)
                if not record.ok and not opts.keep_going:
                    run.stopped_by = "failure"
                    break
        except KeyboardInterrupt:
            run.stopped_by = "interrupted"  # the boot in flight is shut down and not counted
        run.elapsed_s = time.monotonic() - started
        return run

    def boot_once(self, number: int) -> BootRecord:
        """One cold boot, every phase checked; never raises for a boot that stops."""
        directory = self.artifacts / f"boot-{number:04d}"
        record = BootRecord(number)
        guest = Guest(self.plan, directory, name=f"boot{number}")
        current = self.options.phases[0].name
        try:
            guest.launch(wait_for_boot=False)
            for phase in self.options.phases:
                current = phase.name
                deadline = Deadline(phase.seconds, f"the {phase.name} phase of boot {number}")
                marker = self._run_phase(guest, phase, deadline)
                record.ended_at[phase.name] = time.monotonic() - guest.started_at
                uptime = guest_uptime(marker) if marker else None
                if uptime is not None:
                    record.guest_uptime[phase.name] = uptime
        except HarnessError as exc:
            if isinstance(exc, UserError) or (isinstance(exc, QemuExited) and guest.qmp is None):
                raise  # QEMU refused the command line: no boot happened at all
            record.stopped_in = current
            record.reason = exc.message
            record.known_gap = getattr(exc, "known_gap", None)
        except KeyboardInterrupt:
            guest.shutdown()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            guest.shutdown()
        if record.ok and "firmware" in record.ended_at:
            self._firmware_s.append(record.ended_at["firmware"])
        if not record.ok:
            record.console_tail = _tail(directory / "console.log", 25) or \
                "(the serial console printed nothing)"
            record.firmware_tail = _tail(directory / FIRMWARE_LOG, 12)
            record.artifacts = str(directory)
        elif not self.options.keep_artifacts:
            shutil.rmtree(directory, ignore_errors=True)
        return record

    # ---- phases --------------------------------------------------------
    def _run_phase(self, guest: Guest, phase: Phase, deadline: Deadline) -> str | None:
        """Wait for the phase's end and check it; the console marker it ended at."""
        if phase.name == "firmware":
            self._wait_firmware(guest, deadline)
            return None
        if phase.marker is not None:
            text = self._wait_console(guest, phase, deadline)
            problem = check_marker(phase.name, text)
            if problem:
                raise BootStopped(problem)
            return text
        if phase.name == "ssh":
            self._check_ssh(guest, deadline)
            return None
        raise HarnessError(f"phase {phase.name!r} has no marker and no check")

    def _firmware_view(self, guest: Guest) -> FirmwareView:
        """SeaBIOS's debug log, or (UEFI) the boot manager's lines on the console."""
        if self.firmware.uefi:
            return read_uefi_console(_read(guest.artifacts / "console.log"))
        return read_firmware_log(_read(guest.artifacts / FIRMWARE_LOG))

    def _wait_firmware(self, guest: Guest, deadline: Deadline) -> None:
        assert guest.process is not None
        what = "boot loader" if self.firmware.uefi else "boot sector"
        while True:
            view = self._firmware_view(guest)
            if view.stalls and self.options.stalls_stop:
                raise self._stalled(guest, view.stalls[0])
            if view.handed_off:
                if not view.ahci_disks:
                    raise BootStopped(f"the firmware started a {what}, but its log names "
                                      "no AHCI disk: it did not boot through AHCI")
                return
            reason = view.stopped()
            if reason:
                raise BootStopped(reason)
            if not guest.process.alive():
                raise guest.process.exited_error("the firmware phase")
            if deadline.expired():
                started = ("no \"BdsDxe: starting\" of an AHCI disk on the console"
                           if self.firmware.uefi else "no \"Booting from 0000:7c00\" in its log")
                gap = self.gaps[0] if self.gaps else None
                known = (f"; {self._usual()}; this is known gap {gap.id} ({gap.scope()}): "
                         f"{gap.does_instead}" if gap else "")
                raise BootStopped(f"{deadline.describe()}: {self.firmware.label()} never "
                                  f"started a {what} ({started}){known}",
                                  gap.id if gap else None)
            time.sleep(POLL_S)

    def _usual(self) -> str:
        done = sorted(self._firmware_s)
        if done:
            return f"it usually takes {done[len(done) // 2]:.1f} s (this run's completed boots)"
        usual = next((g.usual_s for g in self.gaps if g.usual_s is not None), None)
        return f"it usually takes ~{usual:.1f} s (where the gap does not hold)" if usual \
            else "its usual duration is not known"

    def _stalled(self, guest: Guest, line: str) -> BootStopped:
        took = time.monotonic() - guest.started_at
        gap = self.gaps[0] if self.gaps else None
        known = (f"; known gap {gap.id} ({gap.scope()}): {gap.does_instead}" if gap
                 else "; no known gap covers this QEMU and firmware")
        return BootStopped(f"the firmware stalled: {self.firmware.label()} waited out an AHCI "
                           f"request timeout ({line!r}); the firmware phase took {took:.1f} s "
                           f"where {self._usual()}{known}", gap.id if gap else None)

    def _wait_console(self, guest: Guest, phase: Phase, deadline: Deadline) -> str:
        """The phase's marker, or BootStopped as soon as the console or the
        firmware log says this boot is lost."""
        assert guest.console is not None and guest.process is not None and phase.marker
        patterns = [phase.marker, STOP_LINE.pattern]
        firmware = guest.artifacts / FIRMWARE_LOG
        while True:
            slice_s = max(0.01, min(0.5, deadline.remaining()))
            try:
                index, text = guest.console.expect_any(
                    patterns, Deadline(slice_s, phase.name, scaled=False))
            except DeadlineExceeded:
                # The boot loader can hand control back to the firmware, which
                # then says so only in its own log.
                view = read_firmware_log(_read(firmware))
                if view.gave_up:
                    raise BootStopped(f"the firmware gave up after the boot sector started: "
                                      f"{'; '.join(view.failures)}") from None
                if deadline.expired():
                    raise BootStopped(f"{deadline.describe()}: {phase.marker!r} never appeared "
                                      "on the serial console") from None
                continue
            if index == 1:
                raise BootStopped(f"the serial console says: {text.strip()}")
            return text

    def _check_ssh(self, guest: Guest, deadline: Deadline) -> None:
        guest.connect(deadline)
        problem = root_mount_problem(guest.succeed("cat /proc/mounts", timeout=deadline.remaining()))
        if problem:
            raise BootStopped(problem)
        # The root takes a write and a sync (the boot's own overlay gets it).
        guest.succeed("echo $$ >/root/harness-write-check && sync && "
                      "test -s /root/harness-write-check", timeout=deadline.remaining())
        # ... and it is the AHCI disk: the partition's device path and the
        # driver of the PCI function it hangs off.
        dev = guest.succeed("awk '$2 == \"/\" && $1 != \"rootfs\" { print $1 }' /proc/mounts",
                            timeout=deadline.remaining()).strip()
        path = guest.succeed(f"readlink -f /sys/class/block/{dev.removeprefix('/dev/')}",
                             timeout=deadline.remaining()).strip()
        function = root_controller(path)
        _, driver = guest.execute(f"basename $(readlink /sys/bus/pci/devices/{function}/driver)",
                                  timeout=deadline.remaining()) if function else (1, "")
        problem = root_on_ahci_problem(path, driver.strip())
        if problem:
            raise BootStopped(problem)
        for command in self.options.ssh_commands:
            guest.succeed(command, timeout=deadline.remaining())
        # Nothing waits on the console after READY, and a line below the console's
        # log level never reaches it: the console log and the kernel's own log are
        # both scanned with the one trouble list, last.
        found = kernel_trouble(_read(guest.artifacts / "console.log"))
        found += [line for line in kernel_trouble(guest.succeed("dmesg",
                                                                timeout=deadline.remaining()))
                  if line not in found]
        if found:
            more = f" (and {len(found) - 1} more line(s))" if len(found) > 1 else ""
            raise BootStopped(f"kernel trouble: {found[0]}{more}")

    def _show(self, record: BootRecord) -> None:
        limit = f"/{self.options.boots}" if self.options.boots is not None else ""
        if record.ok:
            phases = " ".join(f"{k} {v:.2f}" for k, v in record.durations().items())
            self.progress(f"boot {record.number}{limit}: ok in {record.total():.2f} s ({phases})")
        else:
            self.progress(f"boot {record.number}{limit}: STOPPED in the {record.stopped_in} "
                          f"phase: {record.reason}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int) -> str | None:
    text = _read(path).replace("\r", "")
    return "\n".join(text.splitlines()[-lines:]) or None


def phase_names(phases: Sequence[Phase]) -> list[str]:
    return [p.name for p in phases]
