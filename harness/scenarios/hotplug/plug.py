"""Hot-plug and unplug of disks, NICs and bridges into a running guest, with deadlines.

Why it is shaped this way:

- A plug is finished when the *guest* has bound a driver to the new function
  and created its block or network device, found by the function's sysfs PCI
  path (the bridge-tree path QEMU reports for the id), never by a guessed
  /dev/vdX.  The guest polls its own sysfs against a deadline in one SSH
  command, so the measured latency is not dominated by SSH round trips.
- An unplug is finished when QEMU emits DEVICE_DELETED whose `data.device` is
  the id: virtio devices emit two events (the virtio backend child has no
  `device`, only a path) and the other one must stay queued for nobody.
- The mechanism of a bus (ACPI BSEL, q35 ACPI, native PCIe, SHPC, none) comes
  from the QOM type of its hotplug-handler (views.qom_pci_buses), never from
  the bridge's name.
- Misuse gets a named error before QEMU is asked (occupied slot, no hotplug
  on the bus, a second unplug while one is pending, an unknown id); with
  `preflight=False` QEMU itself is asked and its own message is carried.
- The guest loads the driver itself, as a real OS does: the image runs
  modprobe by modalias for every hotplug uevent.  Nothing is preloaded, so a
  broken autoload shows up as NotSeenByGuest instead of being papered over.

Disk data: the backing image is raw and created here, so the host can write a
seeded block before the plug (the guest must read exactly it) and read back,
after the unplug, the block the guest wrote (it must be exactly the pattern).
Both patterns are loads.block_bytes, made independently by host and guest.

Next to this module: hotplug_io.py (the guest's write loop for surprise removal,
the host's block check) and hotplug_check.py (the three-view check of a step).
"""

from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, UserError
from harness.guest.running import Guest
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.hotplug.spec import (
    DISK_BYTES,
    BusNotHotpluggable,
    DiskCheck,
    HotplugError,
    NotSeenByGuest,
    Plugged,
    PlugKind,
    PlugRefused,
    PlugSpec,
    SlotOccupied,
    UnknownDevice,
    Unplugged,
    UnplugNotCompleted,
    UnplugPending,
    kind_of,
)
from harness.topology import Topology
from harness.views import QomBus, parse_qemu_view, qom_pci_buses
from harness.workloads.blocks import BLOCK_SIZE, block_bytes, block_md5

__all__ = [
    "DISK_BYTES",
    "PLUG_SECONDS",
    "UNPLUG_SECONDS",
    "BusNotHotpluggable",
    "DiskCheck",
    "HotplugError",
    "Hotplugger",
    "NotSeenByGuest",
    "PlugKind",
    "PlugRefused",
    "PlugSpec",
    "Plugged",
    "SlotOccupied",
    "UnknownDevice",
    "UnplugNotCompleted",
    "UnplugPending",
    "Unplugged",
    "guest_glob",
    "kind_of",
    "seeded_mac",
]

PLUG_SECONDS = 30.0      # device_add -> guest driver bound (native/SHPC: 5 s button wait)
UNPLUG_SECONDS = 30.0    # device_del -> DEVICE_DELETED (pciehp ~6 s under TCG)
SEEN_CHUNK_S = 2.0       # guest-clock length of one sysfs polling command
DISK_NODE_SUFFIX = ".disk"
NET_SUFFIX = ".net"


def guest_glob(path: tuple[str, ...]) -> str:
    """The sysfs directory of a function by bridge-tree path, bus numbers wildcarded:
    ("04.0", "01.0") -> /sys/devices/pci0000:00/0000:00:04.0/0000:*:01.0."""
    parts = [f"0000:00:{path[0]}"] + [f"0000:*:{p}" for p in path[1:]]
    return "/sys/devices/pci0000:00/" + "/".join(parts)


_CHILD: dict[PlugKind, str] = {"disk": "$d/virtio*/block/*", "nic": "$d/net/* $d/virtio*/net/*",
                           "bridge": "$d/config"}


def _seen_script(path: tuple[str, ...], kind: PlugKind, seconds: float) -> str:
    """Poll sysfs in the guest until the function has a driver (bridges: exists)
    and its block/net child; print "@@seen NAME" or a diagnosis and exit 1."""
    need_driver = "" if kind == "bridge" else '[ -e "$d/driver" ] || continue; '
    g = guest_glob(path)
    return (
        "now() { read -r u _ < /proc/uptime; echo \"${u%.*}${u#*.}\"; }; "
        f"end=$(( $(now) + {max(1, int(seconds * 100))} )); "
        "while :; do "
        f"for d in {g}; do [ -e \"$d\" ] || continue; {need_driver}"
        f"for n in {_CHILD[kind]}; do [ -e \"$n\" ] && "
        "{ echo \"@@seen $(basename \"$n\")\"; exit 0; }; done; done; "
        "[ \"$(now)\" -ge \"$end\" ] && break; sleep 0.02; done; "
        f"echo '@@notseen'; for d in {g}; do echo \"$d:\"; ls \"$d\"; done; "
        "dmesg | tail -12; exit 1")


@dataclass
class Hotplugger:
    """Plug and unplug devices of one running guest, keeping the model in step.

    `topology` always describes the machine as it is now (launch topology plus
    what is plugged), so threeview.collect_views(guest, hp.topology) models it.
    """

    guest: Guest
    scratch_dir: Path
    topology: Topology = field(init=False)
    plugged: dict[str, Plugged] = field(default_factory=dict, init=False)
    pending: dict[str, float] = field(default_factory=dict, init=False)  # id -> device_del time
    timers: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.topology = self.guest.plan.topology
        self.scratch_dir.mkdir(parents=True, exist_ok=True)

    # ---- introspection -------------------------------------------------
    def _qmp_exec(self, command: str, args: dict[str, object] | None = None) -> object:
        assert self.guest.qmp is not None, "the guest has no QMP connection"
        t = time.monotonic()
        try:
            return self.guest.qmp.execute(command, args)
        finally:
            self._tick("qmp", t)

    def _tick(self, what: str, since: float) -> None:
        self.timers[what] = self.timers.get(what, 0.0) + time.monotonic() - since

    def buses(self) -> dict[str, QomBus]:
        """{bus name: QomBus} from the QOM tree (handler type -> mechanism)."""
        assert self.guest.qmp is not None
        t = time.monotonic()
        try:
            return {b.name: b for b in qom_pci_buses(self.guest.qmp,
                                                     self.guest.root_bus_hotplug())}
        finally:
            self._tick("qmp", t)

    def mechanism(self, bus: str) -> str:
        found = self.buses()
        if bus not in found:
            raise UserError(f"the machine has no PCI bus {bus!r}",
                            fix=f"use one of {', '.join(sorted(found))}")
        return found[bus].hotplug

    def path_of(self, device_id: str) -> tuple[str, ...]:
        """The bridge-tree path QEMU reports for a device id (query-pci)."""
        view = parse_qemu_view(self._qmp_exec("query-pci"))  # type: ignore[arg-type]
        for f in view.functions:
            if f.id == device_id:
                return f.path
        raise HotplugError(f"QEMU's query-pci does not list {device_id!r} after device_add",
                           fix="the bus may not be numbered yet (firmware not run?)")

    def _preflight(self, spec: PlugSpec, bus: QomBus | None) -> None:
        if bus is None:
            raise UserError(f"the machine has no PCI bus {spec.bus!r} for {spec.id!r}",
                            fix=f"use one of {', '.join(sorted(self.buses()))}")
        if bus.hotplug == "none":
            raise BusNotHotpluggable(
                f"bus {spec.bus!r} does not support hotplugging ({spec.id!r}): its QOM "
                "hotplug-handler is empty" + (" or the port was created with hotplug=off"
                                             if bus.handler_path else ""),
                fix="plug into a bus whose handler is ACPI, a PCIe slot or SHPC "
                    "(`pci-harness where --hotplug DRIVER` lists them)")
        for devfn, qtype, qpath in bus.devices:
            if devfn >> 3 == spec.slot:
                used = {d >> 3 for d, _, _ in bus.devices}
                free = [f"{s:#x}" for s in range(32) if s not in used]
                raise SlotOccupied(
                    f"slot {spec.slot:#x} of bus {spec.bus!r} is occupied by "
                    f"{qpath.rsplit('/', 1)[-1]} ({qtype}); cannot plug {spec.id!r}",
                    fix=f"free slots on {spec.bus}: {', '.join(free) or 'none'}")
        if spec.id in self.plugged:
            raise UserError(f"{spec.id!r} is already plugged", fix="use a new id")

    # ---- plug ------------------------------------------------------------
    def plug(self, spec: PlugSpec, deadline: Deadline | None = None, *,
             preflight: bool = True, wait: bool = True, seed: int = 0) -> Plugged:
        """blockdev-add/netdev_add + device_add, then wait until the guest sees it.

        `wait=False` returns right after device_add (a known limitation, where
        the guest never sees it, is then checked by `wait_seen` with its own
        deadline).  On any failure the backends added here are removed again.
        """
        deadline = deadline or Deadline(PLUG_SECONDS, f"hot-plug of {spec.id}")
        buses = self.buses()
        bus = buses.get(spec.bus)
        if preflight:
            self._preflight(spec, bus)
        mechanism = bus.hotplug if bus is not None else "unknown"
        image = self._add_backend(spec, seed)
        args: dict[str, object] = {"driver": spec.driver, "id": spec.id, "bus": spec.bus,
                                   "addr": f"{spec.slot:#x}"}
        if spec.kind == "disk":
            args["drive"] = spec.id + DISK_NODE_SUFFIX
        elif spec.kind == "nic":
            args["netdev"] = spec.id + NET_SUFFIX
            if spec.mac:
                args["mac"] = spec.mac
        elif spec.chassis_nr is not None:
            args["chassis_nr"] = spec.chassis_nr
        try:
            self._qmp_exec("device_add", args)
        except QmpCommandError as exc:
            self._del_backend(spec)
            raise PlugRefused(f"QEMU refused to plug {spec.id!r} ({spec.driver}) into "
                              f"{spec.bus} slot {spec.slot:#x}: {exc.desc}", exc.desc) from None
        added = time.monotonic()
        self.topology = replace(self.topology, devices=self.topology.devices + (spec.device(),))
        path = self.path_of(spec.id)
        plugged = Plugged(spec=spec, path=path, guest_name="", mechanism=mechanism,
                          seconds=0.0, image=image)
        self.plugged[spec.id] = plugged
        if not wait:
            return plugged
        name = self.wait_seen(plugged, deadline)
        plugged = replace(plugged, guest_name=name, seconds=time.monotonic() - added)
        self.plugged[spec.id] = plugged
        return plugged

    def wait_seen(self, plugged: Plugged, deadline: Deadline) -> str:
        """Wait until the guest has bound the function; return its block/net name.

        The guest polls its own sysfs in chunks of at most SEEN_CHUNK_S of *its*
        clock; the host deadline decides.  The guest clock cannot be the judge:
        right after a snapshot restore it runs many times faster than the wall
        clock (29 s of /proc/uptime in 1.4 s were measured).
        """
        spec = plugged.spec
        t = time.monotonic()
        out = ""
        try:
            while True:
                chunk = min(SEEN_CHUNK_S, max(deadline.remaining(), 0.1))
                _, out = self.guest.execute(_seen_script(plugged.path, spec.kind, chunk),
                                            timeout=chunk + 15)
                for line in out.splitlines():
                    if line.startswith("@@seen "):
                        return "" if spec.kind == "bridge" else line.split(" ", 1)[1].strip()
                if deadline.expired():
                    break
        finally:
            self._tick("event", t)
        raise NotSeenByGuest(
            f"{deadline.describe()}: the guest never bound a driver to {spec.id!r} "
            f"({spec.driver}) at {'/'.join(plugged.path)} on {spec.bus} "
            f"({plugged.mechanism} hotplug)", tail=out[-3000:])

    def _add_backend(self, spec: PlugSpec, seed: int) -> Path | None:
        try:
            if spec.kind == "disk":
                image = self.scratch_dir / f"{spec.id}.raw"
                with open(image, "wb") as fh:   # block 0: the host's seeded pattern
                    fh.truncate(spec.disk_bytes)
                    fh.write(block_bytes(spec.id, seed, 0, 0))
                self._qmp_exec("blockdev-add", {
                    "driver": "raw", "node-name": spec.id + DISK_NODE_SUFFIX,
                    "file": {"driver": "file", "filename": str(image)}})
                return image
            if spec.kind == "nic":
                self._qmp_exec("netdev_add", {"type": "user", "id": spec.id + NET_SUFFIX,
                                              "restrict": True})
        except QmpCommandError as exc:
            raise PlugRefused(f"QEMU refused the backend of {spec.id!r}: {exc.desc}",
                              exc.desc) from None
        return None

    def _del_backend(self, spec: PlugSpec) -> None:
        try:
            if spec.kind == "disk":
                self._qmp_exec("blockdev-del", {"node-name": spec.id + DISK_NODE_SUFFIX})
            elif spec.kind == "nic":
                self._qmp_exec("netdev_del", {"id": spec.id + NET_SUFFIX})
        except QmpCommandError as exc:
            raise HotplugError(f"could not remove the backend of {spec.id!r}: {exc.desc}",
                               fix="the device may still use it (unplug not completed?)"
                               ) from None

    # ---- unplug ----------------------------------------------------------
    def request_unplug(self, device_id: str) -> None:
        """device_del once; a second request while pending is refused here."""
        if device_id in self.pending:
            waited = time.monotonic() - self.pending[device_id]
            raise UnplugPending(
                f"{device_id!r} is already in the process of unplug (device_del sent "
                f"{waited:.2f} s ago, no DEVICE_DELETED yet)",
                fix="wait for the first unplug; a second attention-button press cancels "
                    "a native/SHPC unplug in the guest")
        try:
            self._qmp_exec("device_del", {"id": device_id})
        except QmpCommandError as exc:
            if exc.error_class == "DeviceNotFound":
                raise UnknownDevice(f"cannot unplug {device_id!r}: {exc.desc}",
                                    fix="list the ids with query-pci (qdev_id)") from None
            raise HotplugError(f"QEMU refused to unplug {device_id!r}: {exc.desc}") from None
        self.pending[device_id] = time.monotonic()

    def wait_unplugged(self, device_id: str, deadline: Deadline) -> float:
        """Wait for DEVICE_DELETED with data.device == id; seconds since device_del."""
        assert self.guest.qmp is not None
        t = time.monotonic()
        try:
            self.guest.qmp.wait_event(
                "DEVICE_DELETED", deadline,
                match=lambda e: e.get("data", {}).get("device") == device_id)
        except DeadlineExceeded as exc:
            raise UnplugNotCompleted(
                f"no DEVICE_DELETED for {device_id!r}: {exc.message}",
                fix="the guest did not eject it (see its console log)",
                tail=self.guest.console.tail() if self.guest.console else None) from None
        finally:
            self._tick("event", t)
        return time.monotonic() - self.pending.pop(device_id)

    def unplug(self, device_id: str, deadline: Deadline | None = None) -> Unplugged:
        """device_del, DEVICE_DELETED of the id, then blockdev-del / netdev_del."""
        deadline = deadline or Deadline(UNPLUG_SECONDS, f"unplug of {device_id}")
        plugged = self.plugged.get(device_id)
        mechanism = plugged.mechanism if plugged else "cold-plugged"
        self.request_unplug(device_id)
        seconds = self.wait_unplugged(device_id, deadline)
        if plugged is not None:
            self._del_backend(plugged.spec)
            del self.plugged[device_id]
        self.topology = replace(self.topology, devices=tuple(
            d for d in self.topology.devices if d.id != device_id))
        return Unplugged(device_id, mechanism, seconds)

    # ---- data ------------------------------------------------------------
    def check_disk(self, plugged: Plugged, seed: int) -> DiskCheck:
        """Guest reads the host's block 0; writes block 1 (direct) and re-reads it."""
        spec = plugged.spec
        dev = "/dev/" + shlex.quote(plugged.guest_name)
        want0 = block_md5(spec.id, seed, 0, 0)
        want1 = block_md5(spec.id, seed, 1, 1)
        line = (f"pcih {spec.id} seed={seed} blk=000001 gen=000001").ljust(63)
        t = time.monotonic()
        out = self.guest.succeed(
            f"dd if={dev} bs={BLOCK_SIZE} count=1 iflag=direct 2>/dev/null | md5sum; "
            f"yes {shlex.quote(line)} | head -c {BLOCK_SIZE} | dd of={dev} bs={BLOCK_SIZE} "
            "seek=1 count=1 iflag=fullblock oflag=direct 2>/dev/null; "
            f"dd if={dev} bs={BLOCK_SIZE} skip=1 count=1 iflag=direct 2>/dev/null | md5sum")
        self._tick("guest", t)
        sums = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
        got0, got1 = (sums + ["", ""])[:2]
        return DiskCheck(read_ok=got0 == want0, write_ok=got1 == want1,
                         detail=f"block 0 md5 {got0} (host wrote {want0}); block 1 md5 "
                                f"{got1} (pattern {want1})")

    def check_nic(self, plugged: Plugged) -> str:
        """The MAC the guest reports for the new interface ('' when unreadable)."""
        t = time.monotonic()
        status, out = self.guest.execute(
            f"cat /sys/class/net/{shlex.quote(plugged.guest_name)}/address")
        self._tick("guest", t)
        return out.strip() if status == 0 else ""


def seeded_mac(rng: random.Random) -> str:
    """A locally administered unicast MAC from the run's random stream."""
    tail = rng.getrandbits(24)
    return f"52:54:01:{tail >> 16:02x}:{(tail >> 8) & 0xff:02x}:{tail & 0xff:02x}"
