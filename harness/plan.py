"""What decides one guest's QEMU command line: the LaunchPlan, and the CPU
model and firmware every guest shares.  Values only; harness/guest/running.py's
Guest turns a plan into a running QEMU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.guest.image import GuestImage
from harness.qemu.accel import Accel
from harness.qemu.binary import QemuBinary
from harness.qemu.firmware import Firmware, resolve_firmware
from harness.topology import Topology

__all__ = ["CPU_MODEL", "EFI_VARS", "FIRMWARE", "FIRMWARE_LOG", "LaunchPlan", "plan_firmware"]

# A named model (not `max`): the same on every QEMU version, so cross-version
# migration works, and under TCG the kernel patches far fewer alternatives
# (~0.6 s less boot).  RDRAND feeds the guest's entropy pool at once, so
# dropbear's first login does not wait for randomness.
CPU_MODEL = "qemu64,+rdrand"
# SeaBIOS (QEMU's default) is the default: it reserves I/O and memory windows
# on bridges, without which a device hot-plugged behind an empty bridge gets
# no resources.  qboot boots ~0.3 s faster and suits tests without hotplug.
# Any other firmware is a --firmware spec (harness/qemu/firmware.py).
FIRMWARE = {"seabios": None, "qboot": "qboot.rom"}
FIRMWARE_LOG = "firmware.log"


@dataclass(frozen=True)
class LaunchPlan:
    """Everything that decides the QEMU command line of one guest."""

    binary: QemuBinary
    accel: Accel
    image: GuestImage
    topology: Topology
    firmware: str = "seabios"         # a --firmware spec (harness.qemu.firmware)
    memory: str | None = None         # overrides the topology's memory
    extra_args: tuple[str, ...] = ()  # e.g. ("-S",) for a paused machine
    # More -netdev values than the management NIC's ("user,id=n1-nd,..."): the
    # backends of topology NICs (netdev=...); render.py writes them.
    netdevs: tuple[str, ...] = ()
    boot_guest: bool = True           # False: no kernel, QMP only (the where-oracle)
    kernel_args: tuple[str, ...] = () # e.g. ("pci=nomsi",) or ("iomem=relaxed",)
    # The guest can open an SSH session that survives live migration (see
    # harness/guest/hopsocket.py): ping-pong checks every hop over it.
    migrating_ssh: bool = False
    # SeaBIOS's debug console (I/O port 0x402) to firmware.log in the artifacts:
    # the only place that says whether the firmware found a disk to boot.
    firmware_log: bool = False
    # A scratch disk's failed request stops the VM with the request pending in
    # the device (werror/rerror=stop): how a switch point halts a request.
    halt_on_disk_error: bool = False
    # A read-only image as an ATAPI CD-ROM on the built-in AHCI's second port.
    ahci_cdrom: Path | None = None


EFI_VARS = "efi-vars.fd"


def plan_firmware(plan: LaunchPlan) -> Firmware:
    """PLAN's --firmware resolved for its QEMU; OVMF only where it can boot the guest.

    The kernel-booted guests hand QEMU an ELF vmlinux (PVH), which only
    SeaBIOS's and qboot's option ROM start: OVMF boots disks (boot-stress).
    """
    firmware = resolve_firmware(plan.firmware, plan.binary.path, plan.binary.given)
    if firmware.uefi and plan.boot_guest and plan.topology.boot_disk is None:
        raise UserError(f"--firmware {plan.firmware} boots disks only: this guest's kernel is "
                        "started by QEMU through PVH (-kernel vmlinux), which OVMF does not do",
                        fix="use OVMF with boot-stress (it boots the AHCI-root disk through "
                            "GRUB), or a BIOS firmware (seabios, qboot, a -bios FILE) here")
    return firmware
