"""A running guest: QEMU process + QMP + serial console + SSH, built from a topology.

`Guest.launch()` is the only way a guest comes to life (the factory calls it
for the CLI and the fixtures alike).  Launch either finishes with an SSH
session to a ready guest or cleans up everything it started and raises a
HarnessError that says what happened (QEMU's exit status or signal and its
stderr, or the console tail of a guest that never became ready).

What decides the command line is a LaunchPlan (harness/plan.py); the script
that starts the same QEMU by hand is harness/reproduce.py.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, GuestNotReady, HarnessError
from harness.guest.console import Console, ConsoleClosed, ConsoleFifos
from harness.guest.hopsocket import HopSocket, guest_command, guestfwd_option
from harness.guest.ssh import GuestShell, SshKey
from harness.paths import private_dir
from harness.plan import CPU_MODEL, EFI_VARS, FIRMWARE, FIRMWARE_LOG, LaunchPlan, plan_firmware
from harness.qemu.binary import firmware_missing_error, missing_firmware
from harness.qemu.firmware import Firmware
from harness.qemu.probe import root_bus_hotplug
from harness.qemu.process import QemuProcess
from harness.qemu.qmp import Qmp
from harness.reproduce import write_reproduce_script

if TYPE_CHECKING:
    from harness.topology.render import RenderedMachine

__all__ = ["BOOT_SECONDS", "CPU_MODEL", "FIRMWARE", "FIRMWARE_LOG", "BootTimings", "Guest",
           "LaunchPlan", "write_reproduce_script"]

BOOT_SECONDS = 60.0     # TCG seconds from spawn to the READY marker
#: How often a silent boot reads QEMU's stderr for firmware it could not open.
FIRMWARE_CHECK_S = 0.5
@dataclass
class BootTimings:
    """Seconds since QEMU was spawned, per phase (the boot benchmark's breakdown)."""

    qmp_ready: float = 0.0        # QEMU started and QMP negotiated
    init_started: float = 0.0     # firmware + kernel done: /init printed its marker
    sshd_ready: float = 0.0       # /init says dropbear listens
    ssh_connected: float = 0.0    # paramiko session established
    guest_uptime_init: float = 0.0   # guest clock when /init started
    guest_uptime_ready: float = 0.0  # guest clock when sshd was ready
    restored: bool = False

    def as_dict(self) -> dict[str, float | bool]:
        return dict(self.__dict__)


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def _accept(listener: socket.socket, process: QemuProcess, deadline: Deadline,
            what: str) -> socket.socket:
    """Accept QEMU's connection, noticing at once if QEMU died instead."""
    while True:
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            conn, _ = listener.accept()
            return conn
        if not process.alive():
            raise process.exited_error(f"start-up (before connecting its {what})")
        if deadline.expired():
            raise DeadlineExceeded(f"{deadline.describe()}: QEMU never connected its {what}",
                                   tail=process.stderr_text()[-2000:])


def render_plan(plan: LaunchPlan, scratch_dir: Path, mgmt_mac: str, run_dir: Path,
                artifacts: Path | None = None) -> RenderedMachine:
    """Render PLAN's topology once, with everything else the command line needs
    as inputs: the MAC, the scratch directory, the migrating SSH forward (a
    socket in RUN_DIR), the memory override, no guest RAM in QEMU's core, the
    firmware's debug console log (in ARTIFACTS)."""
    from harness.topology.render import RenderInputs, render

    hop = str(run_dir / "ssh-hop.sock")
    log = (artifacts or run_dir) / FIRMWARE_LOG if plan.firmware_log else None
    return render(plan.topology, RenderInputs(
        scratch_dir=scratch_dir, mgmt_mac=mgmt_mac,
        mgmt_netdev_options=(guestfwd_option(hop),) if plan.migrating_ssh else (),
        memory=plan.memory, dump_guest_core=False, firmware_log=log, netdevs=plan.netdevs,
        halt_on_disk_error=plan.halt_on_disk_error, ahci_cdrom=plan.ahci_cdrom,
        private_paths=((hop,) if plan.migrating_ssh else ()) + ((str(log),) if log else ())))




def _random_mac() -> str:
    # Random per guest: no two workers' guests share a MAC.
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


class Guest:
    """A booted guest.  Use as a context manager or call `shutdown()`."""

    def __init__(self, plan: LaunchPlan, artifacts: Path, name: str = "guest",
                 same_machine_as: Guest | None = None):
        self.plan = plan
        self.name = name
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir = private_dir("pcih-")  # short 0700 dir: unix socket paths < 108 bytes
        self.key = SshKey()
        self.timings = BootTimings()
        self.process: QemuProcess | None = None
        self.qmp: Qmp | None = None
        self.console: Console | None = None
        self.shell: GuestShell | None = None
        self.ssh_port: int | None = None
        # This process's end of the migrating SSH connection (plan.migrating_ssh),
        # until a session takes it over (open_migrating_session, or a migration).
        self.hop_sock: socket.socket | None = None
        self.argv: list[str] = []
        self.started_at = 0.0  # time.monotonic() when QEMU was spawned
        self._down = False
        # A migration destination (same_machine_as) gets the very same
        # devices, disks and MAC; otherwise this guest renders its own.
        self._owns_disks = same_machine_as is None
        self.mgmt_mac: str = same_machine_as.mgmt_mac if same_machine_as else _random_mac()
        scratch = (same_machine_as.rendered.inputs.scratch_dir if same_machine_as
                   else artifacts / "disks")
        self.rendered: RenderedMachine = render_plan(plan, scratch, self.mgmt_mac, self.run_dir,
                                                     artifacts)
        self.firmware: Firmware = plan_firmware(plan)
        #: OVMF's variable store: this guest's own copy of the template (a twin shares it).
        self.efi_vars: Path | None = scratch / EFI_VARS if self.firmware.uefi else None

    def incoming_twin(self, artifacts: Path, name: str, plan: LaunchPlan | None = None) -> Guest:
        """A not-yet-started Guest with this one's devices, disks and MAC: the
        destination of a migration (start it with `launch(incoming=...)`).
        `plan`: another launch plan for it (another QEMU binary, extra arguments)."""
        return Guest(plan or self.plan, artifacts, name=name, same_machine_as=self)

    # ---- command line -------------------------------------------------
    def build_argv(self, incoming: str | None = None) -> list[str]:
        plan = self.plan
        keyfile = self.run_dir / "authorized_keys"
        argv = [str(plan.binary.path), "-name", self.name, "-accel", plan.accel.name,
                "-cpu", CPU_MODEL, "-nodefaults", "-no-user-config", "-display", "none",
                # The console first: QEMU opens chardevs in command-line order,
                # so once QMP has connected its console FIFOs are open.
                "-chardev", (f"pipe,id=console,path={self.run_dir / 'console'},"
                             f"logfile={self.artifacts / 'console.log'},logappend=on"),
                "-serial", "chardev:console",
                "-chardev", f"socket,id=qmp,path={self.run_dir / 'qmp.sock'}",
                "-mon", "chardev=qmp,mode=control",
                "-fw_cfg", f"name=opt/harness/authorized_keys,file={keyfile}"]
        argv += self.firmware.qemu_args(self.efi_vars)
        if plan.boot_guest and plan.topology.boot_disk is not None:
            # The firmware boots the disk; its kernel command line is fixed on
            # the disk, so the per-run arguments reach the guest through fw_cfg.
            modules = ",".join(self.rendered.guest_modules)
            args = " ".join([f"harness.modules={modules}", f"harness.mac={self.mgmt_mac}",
                             *plan.kernel_args])
            argv += ["-fw_cfg", f"name=opt/harness/cmdline,string={args.replace(',', ',,')}"]
        elif plan.boot_guest:
            modules = ",".join(self.rendered.guest_modules)
            argv += ["-kernel", str(plan.image.vmlinux), "-initrd", str(plan.image.initrd),
                     "-append", " ".join([plan.image.cmdline_base, *plan.kernel_args,
                                          f"harness.modules={modules}",
                                          f"harness.mac={self.mgmt_mac}"])]
        argv += self.rendered.argv  # the topology and the machine: rendered once
        argv += list(plan.extra_args)
        if incoming:
            argv += ["-incoming", incoming]
        return argv

    def _create_disks(self) -> None:
        if not self._owns_disks:
            return
        if self.efi_vars is not None and self.firmware.vars_template is not None:
            self.efi_vars.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.firmware.vars_template, self.efi_vars)
        for disk in self.rendered.scratch_disks:
            disk.path.parent.mkdir(parents=True, exist_ok=True)
            if disk.backing is not None:  # an overlay: the backing image is never written
                argv = ["qemu-img", "create", "-q", "-f", disk.format, "-b", str(disk.backing),
                        "-F", str(disk.backing_format), str(disk.path)]
            else:
                argv = ["qemu-img", "create", "-q", "-f", disk.format, str(disk.path),
                        str(disk.size_bytes)]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise HarnessError(f"qemu-img could not create {disk.path}",
                                   fix="check that qemu-utils is installed", tail=proc.stderr)

    def _write_artifacts(self) -> None:
        (self.artifacts / "qemu.cmdline").write_text(shlex.join(self.argv) + "\n")
        for sock in ("qmp.sock", "console.in", "console.out"):
            link = self.artifacts / sock
            link.unlink(missing_ok=True)  # a dangling link of an earlier run here
            link.symlink_to(self.run_dir / sock)
        (self.artifacts / "authorized_keys").write_text(self.key.authorized_line)
        (self.artifacts / "id_ed25519").write_text(self.key.private_pem)
        os.chmod(self.artifacts / "id_ed25519", 0o600)
        copies = ((self.firmware.vars_template, self.efi_vars)
                  if self.efi_vars is not None and self.firmware.vars_template else None)
        write_reproduce_script(self.artifacts / "reproduce.sh", self.argv, self.run_dir,
                               self.artifacts, overlays=[d for d in self.rendered.scratch_disks
                                                         if d.backing is not None],
                               copies=(copies,) if copies else ())

    # ---- lifecycle ----------------------------------------------------
    def launch(self, incoming: str | None = None, wait_for_ssh: bool = True,
               wait_for_boot: bool = True) -> Guest:
        """Start QEMU and wait (with a deadline) until the guest answers SSH.

        With `incoming` it returns as soon as QMP is up (the caller drives the
        migration, then calls `connect`); with wait_for_ssh=False it returns
        when sshd listens, without logging in (the snapshot builder); with
        wait_for_boot=False as soon as QMP is up (boot-stress times each boot
        phase itself, then calls `connect`).
        """
        try:
            self._launch(incoming, wait_for_ssh and wait_for_boot, wait_for_boot)
        except BaseException:
            self.shutdown()
            raise
        return self

    def _launch(self, incoming: str | None, wait_for_ssh: bool, wait_for_boot: bool) -> None:
        (self.run_dir / "authorized_keys").write_text(self.key.authorized_line)
        self._create_disks()
        self.argv = self.build_argv(incoming)
        self._write_artifacts()
        qmp_listener = _listen(self.run_dir / "qmp.sock")
        console_fifos = ConsoleFifos.make(self.run_dir / "console")
        hop_listener = _listen(self.run_dir / "ssh-hop.sock") if self.plan.migrating_ssh \
            else None
        deadline = Deadline(BOOT_SECONDS, f"boot of {self.plan.topology.machine} guest")
        started = self.started_at = time.monotonic()
        try:
            self.process = QemuProcess(self.argv, self.artifacts)
            # QEMU creates chardevs in command-line order: console, then QMP.
            qmp_sock = _accept(qmp_listener, self.process, deadline, "QMP socket")
            if hop_listener is not None:
                # Connected when QEMU creates the netdev, after the chardevs.
                self.hop_sock = _accept(hop_listener, self.process, deadline,
                                        "guestfwd connection (migrating SSH)")
        except BaseException:
            console_fifos.close()
            raise
        finally:
            qmp_listener.close()
            if hop_listener is not None:
                hop_listener.close()
        self.console = Console(console_fifos, self.artifacts / "console.log")
        try:
            self.qmp = Qmp(qmp_sock, self.artifacts / "qmp.log", name=self.name)
        except Exception as exc:  # noqa: BLE001 - qemu.qmp's ConnectError and friends
            # Most often QEMU connected its sockets and then rejected the
            # command line: say that, with its stderr, not "EOF".
            self.process.wait(Deadline(3, "QEMU exit", scaled=False))
            if not self.process.alive():
                raise self.process.exited_error("start-up") from None
            raise HarnessError(f"QMP negotiation with QEMU failed: {exc}") from None
        self.timings.qmp_ready = time.monotonic() - started
        if not self.plan.boot_guest:
            return
        if incoming or not wait_for_boot:
            return  # the caller drives the migration or the boot, then calls `connect()`
        self._wait_ready(deadline, started, wait_for_ssh)

    def _expect_booting(self, pattern: str, deadline: Deadline) -> str:
        """console.expect in slices of FIRMWARE_CHECK_S; between them QEMU's stderr is
        read, so a firmware file QEMU could not open is named within seconds
        instead of a silent console at the boot deadline."""
        assert self.console is not None and self.process is not None
        while True:
            piece = Deadline(max(min(deadline.remaining(), FIRMWARE_CHECK_S), 0.01),
                             deadline.what, scaled=False)
            try:
                return self.console.expect(pattern, piece)
            except DeadlineExceeded:
                stderr = self.process.stderr_text()
                missing = missing_firmware(stderr)
                if missing:
                    raise firmware_missing_error(self.plan.binary, missing, stderr) from None
                if deadline.expired():
                    raise DeadlineExceeded(f"{deadline.describe()}: {pattern!r} never appeared "
                                           "on the serial console",
                                           tail=self.console.tail()) from None

    def _wait_ready(self, deadline: Deadline, started: float, wait_for_ssh: bool) -> None:
        assert self.console is not None and self.process is not None
        try:
            text = self._expect_booting(r"HARNESS-INIT [\d.]+", deadline)
            self.timings.init_started = time.monotonic() - started
            self.timings.guest_uptime_init = float(text.split()[1])
            text = self.console.expect(r"HARNESS-READY [\d.]+", deadline)
            self.timings.sshd_ready = time.monotonic() - started
            self.timings.guest_uptime_ready = float(text.split()[1])
        except ConsoleClosed:
            self.process.wait(Deadline(2, "QEMU exit", scaled=False))
            raise self.process.exited_error("boot") from None
        except DeadlineExceeded as exc:
            if not self.process.alive():
                raise self.process.exited_error("boot") from None
            stderr = self.process.stderr_text().strip()
            said = "; QEMU's stderr: " + " / ".join(stderr.splitlines()[-5:]) if stderr else ""
            raise GuestNotReady(f"the {self.plan.topology.machine} guest never became ready: "
                                f"{exc.message}{said}",
                                fix=f"read {self.artifacts / 'console.log'}; raise "
                                    "--timeout-multiplier if the host is just slow",
                                tail=(self.console.tail() or "(the serial console printed nothing)")
                                + (f"\n--- qemu.stderr ---\n{stderr[-2000:]}" if stderr else "")
                                ) from None
        if wait_for_ssh:
            self.connect(deadline, started)

    def connect(self, deadline: Deadline, started: float | None = None) -> None:
        """Find the SSH forward and open the SSH session."""
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        self.shell = self.login(deadline)
        if started is not None:
            self.timings.ssh_connected = time.monotonic() - started

    def login(self, deadline: Deadline) -> GuestShell:
        """A new SSH session through the host forward (the caller closes it)."""
        assert self.qmp is not None
        self.ssh_port = self._ssh_port()
        shell = GuestShell(self.ssh_port, self.key, self.artifacts / "ssh.log")
        try:
            shell.connect(deadline)
        except BaseException:
            shell.close()
            raise
        return shell

    def open_migrating_session(self, deadline: Deadline) -> None:
        """Replace the SSH session by one that survives live migration.

        Over the current session, the guest starts `nc` to the guestfwd address
        with `dropbear -i` on the connection; the harness logs in over this
        process's end of it (`hop_sock`).  `migration.migrate` moves the
        session to each destination.
        """
        if self.hop_sock is None:
            raise HarnessError("this guest was not launched with migrating_ssh=True")
        sshd = "/run/harness-hop-sshd"
        self.succeed(f"printf '#!/bin/sh\\nexec dropbear -i -s -r /etc/dropbear/hostkey "
                     f"2>/dev/null\\n' >{sshd} && chmod 755 {sshd} && "
                     + guest_command(sshd))
        session = GuestShell(None, self.key, self.artifacts / "ssh.log")
        try:
            session.attach(HopSocket(self.hop_sock, self.name), deadline)
        except BaseException:
            session.close()
            raise
        self.hop_sock = None  # the session owns it now
        if self.shell is not None:
            self.shell.close()
        self.shell = session

    def _ssh_port(self) -> int:
        assert self.qmp is not None
        usernet = self.qmp.hmp("info usernet")
        match = re.search(r"HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+10\.0\.2\.15\s+22\b", usernet)
        if not match:
            raise HarnessError("no SSH host forward in `info usernet`", tail=usernet)
        return int(match.group(1))

    def shutdown(self, grace_s: float = 5.0) -> int | None:
        """Idempotent: QMP quit, then SIGTERM, then SIGKILL.  Returns QEMU's exit status."""
        if self._down:
            return self.process.returncode if self.process else None
        self._down = True
        if self.shell is not None:
            self.shell.close()
        if self.hop_sock is not None:
            self.hop_sock.close()
        if self.process is not None and self.process.alive() and self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=grace_s)
            except (HarnessError, OSError):
                pass
            self.process.wait(Deadline(grace_s, "QEMU exit after quit", scaled=False))
        if self.qmp is not None:
            self.qmp.close()
        if self.console is not None:
            self.console.close()
        returncode = self.process.kill() if self.process is not None else None
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- verbs ---------------------------------------------------------
    def _shell(self) -> GuestShell:
        if self.shell is None:
            raise HarnessError("the guest has no SSH session (not booted, or shut down)")
        return self.shell

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        return self._shell().execute(command, timeout)

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        return self._shell().succeed(command, timeout)

    def wait_until_succeeds(self, command: str, timeout: float = 60.0) -> str:
        return self._shell().wait_until_succeeds(command, timeout)

    def qmp_execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if self.qmp is None:
            raise HarnessError("QMP is not connected")
        return self.qmp.execute(command, arguments)

    def root_bus_hotplug(self) -> bool | None:
        """Whether this QEMU takes device_add on the guest's root bus: probed by
        behaviour once per binary, because the QOM handler link says otherwise on
        10.0 (see harness/qemu/probe.py)."""
        return root_bus_hotplug(self.plan.binary, self.plan.topology.machine)

    def check_alive(self, during: str) -> None:
        if self.process is not None and not self.process.alive():
            raise self.process.exited_error(during)
