"""Topology -> QEMU arguments.  The only module that writes -machine/-device/-blockdev.

What `disk = SIZE` renders to (one scratch qcow2 image each, node names from ids
so hotplug tests can blockdev-add/-del the same way):

- virtio-blk-pci:  -blockdev node-name=<id>.disk  and  drive=<id>.disk on the device
- ich9-ahci:       an ide-hd with id <id>.hd on bus <id>.0 (port 0)
- virtio-scsi-pci: a scsi-hd with id <id>.hd on bus <id>.0 (target 0, lun 0)
- ahci_disk (q35): an ide-hd with id ahci.hd on the built-in AHCI's bus ide.0

Generated ids contain a dot, which topology ids may not, so they never collide.
Every device gets an explicit addr (layout.resolve) and every port a chassis.
The launcher adds -accel, -kernel, -append, -serial/-chardev, -qmp, -nodefaults and
-display; nothing here does.

Render once: a topology is resolved, validated and rendered exactly once per
guest into a frozen RenderedMachine -- the arguments, the model of what the
guest should see, and what the snapshot key hashes.  What else must be on the
command line (the guest's MAC and scratch directory, the migrating SSH
forward, a memory override, dump-guest-core) is a RenderInputs field, never a
later string edit of the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import TopologyError
from harness.qemu.drivers import BASE_MODULES, driver_info
from harness.qemu.machines import MGMT_SLOT
from harness.topology.data import MGMT_ID, Device, PropValue, Topology
from harness.topology.expect import model_of_resolved
from harness.topology.placement import resolve
from harness.topology.tree import mgmt_device, parents_first
from harness.views.pciview import PciView

MGMT_NETDEV = f"user,id={MGMT_ID},net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22"
AHCI_DISK_ID = "ahci"  # ids derived from it: node "ahci.disk", device "ahci.hd"
_DISK_MODULES = {"ide": ("ahci", "sd_mod"), "scsi": ("sd_mod",), "self": ()}
_KEY_TOKENS = ("<scratch>", "<mac>")
_HALT: tuple[tuple[str, PropValue], ...] = (("werror", "stop"), ("rerror", "stop"))  # what per-guest inputs read as in the snapshot key


@dataclass(frozen=True)
class ScratchDisk:
    """An image the launcher creates (qemu-img create -f FORMAT PATH SIZE) before start."""

    path: Path
    size_bytes: int
    node_name: str
    format: str = "qcow2"
    # An overlay over this image (qemu-img create -b BACKING -F BACKING_FORMAT);
    # then size_bytes is 0 and the overlay takes the backing image's size.
    backing: Path | None = None
    backing_format: str | None = None


@dataclass(frozen=True)
class RenderInputs:
    """What goes on QEMU's command line besides the topology, per guest."""

    scratch_dir: Path
    mgmt_mac: str
    #: Extra `-netdev user` options of the management NIC (the migrating SSH
    #: session's guestfwd); they change the machine, so the key includes them.
    mgmt_netdev_options: tuple[str, ...] = ()
    memory: str | None = None            # overrides the topology's memory ("1G")
    dump_guest_core: bool | None = None  # None: QEMU's default
    #: -netdev values of other NICs' backends (the topology names them in netdev=).
    netdevs: tuple[str, ...] = ()
    #: SeaBIOS's debug console (port 0x402) written to this file, None for none.
    firmware_log: Path | None = None
    #: Per-guest paths inside mgmt_netdev_options (sockets in a run directory):
    #: hashed as a token, like the scratch directory.
    private_paths: tuple[str, ...] = field(default=(), compare=False)
    #: werror=stop,rerror=stop on every scratch disk's device: a failed request
    #: stops the VM (runstate io-error) with the request pending in the device.
    halt_on_disk_error: bool = False
    #: A read-only image as an ide-cd on the built-in AHCI's port 1 (ATAPI).
    ahci_cdrom: Path | None = None


@dataclass(frozen=True)
class RenderedMachine:
    """A topology rendered once: read by the Guest (argv, disks, modules), the
    three views (expected) and the snapshot cache (key_material)."""

    topology: Topology                   # resolved: every addr and chassis explicit
    inputs: RenderInputs
    argv: tuple[str, ...]
    scratch_disks: tuple[ScratchDisk, ...]
    guest_modules: tuple[str, ...]
    expected: PciView                    # what the guest should see (expect.py)

    @property
    def key_material(self) -> tuple[str, ...]:
        """The arguments and guest modules with the per-guest parts (scratch
        directory, MAC, private sockets) as tokens: equal for every guest of the
        same machine, so one snapshot serves them all."""
        values = (str(self.inputs.scratch_dir), self.inputs.mgmt_mac)
        out = []
        for arg in (*self.argv, "modules=" + ",".join(self.guest_modules)):
            for value, token in zip(values, _KEY_TOKENS, strict=True):
                arg = arg.replace(value, token)
            for n, path in enumerate(self.inputs.private_paths):
                arg = arg.replace(path, f"<private{n}>")
            out.append(arg)
        return tuple(out)


def node_name(device_id: str) -> str:
    """The -blockdev node name of a device's scratch disk."""
    return f"{device_id}.disk"


def _escape(value: str) -> str:
    return value.replace(",", ",,")


def _value(value: PropValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return _escape(str(value))


def device_arg(driver: str, props: list[tuple[str, PropValue]]) -> str:
    """One -device value: driver,key=value,... with commas escaped."""
    return ",".join([driver] + [f"{k}={_value(v)}" for k, v in props])


def _blockdev(disk: ScratchDisk) -> str:
    return (f"driver={disk.format},node-name={disk.node_name},file.driver=file,"
            f"file.filename={_escape(str(disk.path))}")


def render(topology: Topology, inputs: RenderInputs | None = None, *,
           scratch_dir: Path | None = None, mgmt_mac: str | None = None) -> RenderedMachine:
    """The -machine/-m/-device/-blockdev/-global/-netdev arguments of a topology and
    the model of it; `scratch_dir`/`mgmt_mac` are a short form of RenderInputs."""
    if inputs is None:
        if scratch_dir is None or mgmt_mac is None:
            raise TypeError("render() needs RenderInputs or scratch_dir and mgmt_mac")
        inputs = RenderInputs(scratch_dir=scratch_dir, mgmt_mac=mgmt_mac)
    scratch_dir, mgmt_mac = inputs.scratch_dir, inputs.mgmt_mac
    topo = resolve(topology)
    machine = topo.machine
    if inputs.dump_guest_core is not None:
        # A crashing QEMU's core (harness/qemu/process.py) need not hold the
        # guest's RAM: gigabytes, and not where a QEMU bug is.
        machine += f",dump-guest-core={'on' if inputs.dump_guest_core else 'off'}"
    argv: list[str] = ["-machine", machine, "-m", inputs.memory or _memory(topo.memory)]
    if not topo.acpi_hotplug:
        argv += ["-global", topo.facts.bridge_acpi_global]
    if inputs.firmware_log is not None:
        argv += ["-chardev", f"file,id=seabios,path={_escape(str(inputs.firmware_log))}",
                 "-device", "isa-debugcon,iobase=0x402,chardev=seabios"]
    disks: list[ScratchDisk] = []
    modules: list[str] = list(BASE_MODULES)
    halt = list(_HALT) if inputs.halt_on_disk_error else []
    for dev in parents_first(topo):
        argv += _device(topo, dev, scratch_dir, disks, modules, halt)
    if topo.ahci_disk is not None:
        disk = ScratchDisk(scratch_dir / f"{AHCI_DISK_ID}.qcow2", topo.ahci_disk,
                           node_name(AHCI_DISK_ID))
        disks.append(disk)
        argv += ["-blockdev", _blockdev(disk), "-device",
                 device_arg("ide-hd", [("id", f"{AHCI_DISK_ID}.hd"), ("bus", "ide.0"),
                                       ("drive", disk.node_name), *halt])]
        modules += _DISK_MODULES["ide"]
    if inputs.ahci_cdrom is not None:
        argv += _cdrom(topo, inputs.ahci_cdrom, halt)
        modules += ["ahci", "sr_mod"]
    if topo.boot_disk is not None:
        argv += _boot_disk(topo, scratch_dir, disks, modules)
    mgmt = mgmt_device(topo)
    for netdev in inputs.netdevs:
        argv += ["-netdev", netdev]
    argv += ["-netdev", ",".join([MGMT_NETDEV, *inputs.mgmt_netdev_options]), "-device",
             device_arg(mgmt.driver, [("id", MGMT_ID), ("netdev", MGMT_ID), ("mac", mgmt_mac),
                                      ("bus", topo.root_bus), ("addr", f"{MGMT_SLOT:#x}"),
                                      *mgmt.props])]
    return RenderedMachine(topology=topo, inputs=inputs, argv=tuple(argv),
                           scratch_disks=tuple(disks),
                           guest_modules=tuple(dict.fromkeys(modules)),
                           expected=model_of_resolved(topo))


BOOT_DISK_ID = "boot"  # ids derived from it: node "boot.disk", device "boot.hd"


def _boot_disk(topo: Topology, scratch_dir: Path, disks: list[ScratchDisk],
               modules: list[str]) -> list[str]:
    """The firmware's only boot device: an ide-hd on AHCI port 0 over a fresh overlay.

    `-boot strict=on`: SeaBIOS tries nothing but the bootindex'ed disk, so a
    disk it cannot boot ends at once in "No bootable device" in its log.
    """
    boot = topo.boot_disk
    assert boot is not None
    disk = ScratchDisk(scratch_dir / f"{BOOT_DISK_ID}.qcow2", 0, node_name(BOOT_DISK_ID),
                       backing=Path(boot.image), backing_format=boot.format)
    disks.append(disk)
    modules += _DISK_MODULES["ide"]
    bus = f"{boot.controller}.0" if boot.controller else topo.facts.builtin_ahci_bus
    assert bus is not None  # layout.validate refused a built-in boot disk on a machine without
    return ["-boot", "strict=on", "-blockdev", _blockdev(disk),
            "-device", device_arg("ide-hd", [("id", f"{BOOT_DISK_ID}.hd"), ("bus", bus),
                                             ("drive", disk.node_name), ("bootindex", 0)])]


CDROM_ID = "cdrom"  # node "cdrom.disk", device "cdrom.cd"


def _cdrom(topo: Topology, image: Path, halt: list[tuple[str, PropValue]]) -> list[str]:
    bus = topo.facts.builtin_ahci_bus
    if bus is None:
        raise TopologyError(f"an AHCI CD-ROM needs a machine with a built-in AHCI "
                            f"({topo.machine} has none)", fix="use q35")
    blockdev = (f"driver=raw,node-name={node_name(CDROM_ID)},read-only=on,"
                f"file.driver=file,file.filename={_escape(str(image))}")
    return ["-blockdev", blockdev, "-device", device_arg("ide-cd", [("id", f"{CDROM_ID}.cd"),
                                             ("bus", bus.replace(".0", ".1")),
                                             ("drive", node_name(CDROM_ID)), *halt])]


def _memory(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib}M" if size % mib == 0 else f"{size // 1024}K"


def _device(topo: Topology, dev: Device, scratch_dir: Path, disks: list[ScratchDisk],
            modules: list[str], halt: list[tuple[str, PropValue]]) -> list[str]:
    assert dev.addr is not None
    info = driver_info(dev.driver)
    props: list[tuple[str, PropValue]] = [("id", dev.id), ("bus", topo.bus_of(dev)),
                                          ("addr", dev.addr.qemu())]
    props += list(dev.props)
    if info is not None:
        props += [(name, value.format(id=dev.id)) for name, value in info.default_props
                  if dev.prop(name) is None]
    out: list[str] = []
    child: list[str] = []
    if info is not None:
        modules += info.modules
    if dev.disk is not None and info is not None and info.disk is not None:
        disk = ScratchDisk(scratch_dir / f"{dev.id}.qcow2", dev.disk, node_name(dev.id))
        disks.append(disk)
        modules += _DISK_MODULES[info.disk]
        out += ["-blockdev", _blockdev(disk)]
        if info.disk == "self":
            props += [("drive", disk.node_name), *halt]
        elif info.disk == "ide":
            child = ["-device", device_arg("ide-hd", [("id", f"{dev.id}.hd"),
                                                      ("bus", f"{dev.id}.0"),
                                                      ("drive", disk.node_name), *halt])]
        else:
            child = ["-device", device_arg("scsi-hd", [("id", f"{dev.id}.hd"),
                                                       ("bus", f"{dev.id}.0"), ("channel", 0),
                                                       ("scsi-id", 0), ("lun", 0),
                                                       ("drive", disk.node_name), *halt])]
    return out + ["-device", device_arg(dev.driver, props)] + child


def probe_device_args(driver: str, device_id: str, bus: str, slot: int,
                      props: tuple[tuple[str, PropValue], ...] = ()) -> tuple[str, ...]:
    """`-device` arguments for one device at BUS/SLOT exactly as given.

    No topology validation on purpose: the where-oracle's checks ask QEMU itself
    whether it accepts a placement, including ones the PCIe spec (and so
    layout.validate) forbids but QEMU 7.2 takes.  Add them with
    LaunchPlan(extra_args=...) to a rendered topology.
    """
    return ("-device", device_arg(driver, [("id", device_id), ("bus", bus),
                                           ("addr", f"{slot:#x}"), *props]))
