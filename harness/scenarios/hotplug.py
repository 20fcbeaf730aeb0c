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
"""

from __future__ import annotations

import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError, UserError
from harness.machine import Guest
from harness.qemu.qmp import QmpCommandError
from harness.scenarios.loads import BLOCK_SIZE, block_bytes, block_md5
from harness.topology import Address, Device, Topology
from harness.topology.drivers import driver_info
from harness.topology.model import ExpectValue
from harness.views import Change, PciView, QomBus, parse_qemu_view, qom_pci_buses
from harness.views.threeview import ThreeViews, changes

__all__ = ["DISK_BYTES", "PLUG_SECONDS", "UNPLUG_SECONDS", "BusNotHotpluggable",
           "DiskCheck", "HotplugError", "Hotplugger", "IoLoad", "IoState", "Kind",
           "NotSeenByGuest", "PlugRefused",
           "PlugSpec", "Plugged", "SlotOccupied", "UnknownDevice", "UnplugNotCompleted",
           "UnplugPending", "Unplugged", "guest_glob", "host_block_ok", "kind_of", "seeded_mac",
           "step_problems"]

Kind = Literal["disk", "nic", "bridge"]
PLUG_SECONDS = 30.0      # device_add -> guest driver bound (native/SHPC: 5 s button wait)
UNPLUG_SECONDS = 30.0    # device_del -> DEVICE_DELETED (pciehp ~6 s under TCG)
DISK_BYTES = 4 * 1024 * 1024
SEEN_CHUNK_S = 2.0       # guest-clock length of one sysfs polling command
DISK_NODE_SUFFIX = ".disk"
NET_SUFFIX = ".net"


class HotplugError(HarnessError):
    """A hot-plug or unplug request that cannot or did not work."""


class SlotOccupied(HotplugError, UserError):
    """The slot asked for already holds a function."""


class BusNotHotpluggable(HotplugError, UserError):
    """The bus has no hotplug handler (e.g. a pcie-root-port with hotplug=off)."""


class UnknownDevice(HotplugError, UserError):
    """device_del of an id QEMU does not know."""


class UnplugPending(HotplugError, UserError):
    """A second device_del while the first one has not completed."""


class PlugRefused(HotplugError):
    """QEMU refused device_add/blockdev-add/netdev_add; `desc` is QEMU's text."""

    def __init__(self, message: str, desc: str, **kw: str | None):
        super().__init__(message, **kw)
        self.desc = desc


class NotSeenByGuest(HotplugError, DeadlineExceeded):
    """QEMU accepted the device but the guest never bound a driver to it in time."""


class UnplugNotCompleted(HotplugError, DeadlineExceeded):
    """No DEVICE_DELETED for the id before the deadline."""


def kind_of(driver: str) -> Kind:
    """disk / nic / bridge from the drivers table (its disk role, class and bridge kind)."""
    info = driver_info(driver)
    if info is None:
        raise UserError(f"the harness does not know how to hot-plug {driver!r}",
                        fix="use virtio-blk-pci, virtio-net-pci, e1000, e1000e or pci-bridge")
    if info.bridge is not None:
        return "bridge"
    if info.disk == "self":
        return "disk"
    if info.class_code >> 16 == 0x02:
        return "nic"
    raise UserError(f"hot-plug of {driver!r} is not supported by this scenario",
                    fix="use a virtio-blk-pci disk, a NIC or a pci-bridge")


@dataclass(frozen=True)
class PlugSpec:
    """One device to hot-plug: `slot` on `bus` (function 0)."""

    id: str
    driver: str
    bus: str
    slot: int
    mac: str | None = None           # NICs: the MAC the guest must report
    chassis_nr: int | None = None    # pci-bridge
    disk_bytes: int = DISK_BYTES

    @property
    def kind(self) -> Kind:
        return kind_of(self.driver)

    def device(self) -> Device:
        """The topology Device this plug adds (the model's view of it)."""
        props: tuple[tuple[str, str | int | bool], ...] = ()
        expect: tuple[tuple[str, ExpectValue], ...] = ()
        if self.chassis_nr is not None:
            props = (("chassis_nr", self.chassis_nr),)
        if self.kind == "bridge":
            # The spec names no mechanism for a hot-added bridge's bus, only that
            # devices plugged behind it work (the cold-plug rule of expect.py, ACPI
            # BSEL, does not apply: no ACPI table describes a hot-added bridge).
            # The model leaves it open (None: not compared); the behaviour is
            # judged by test_device_behind_a_hot_added_bridge_is_seen, the one
            # place QEMU 7.2's gap (its own SHPC, never driven) is stated.
            expect = (("bus_hotplug", None),)
        return Device(id=self.id, driver=self.driver, bus=self.bus,
                      addr=Address(self.slot, 0), props=props, expect=expect)


@dataclass(frozen=True)
class Plugged:
    spec: PlugSpec
    path: tuple[str, ...]     # bridge-tree path of the new function (QEMU's view)
    guest_name: str           # "vdb", "eth2", or "" for a bridge
    mechanism: str            # the bus's hotplug mechanism (views.hotplug_mechanism)
    seconds: float            # device_add returned -> guest driver bound
    image: Path | None = None  # disks: the raw backing file


@dataclass(frozen=True)
class Unplugged:
    id: str
    mechanism: str
    seconds: float            # device_del -> DEVICE_DELETED (data.device == id)


@dataclass(frozen=True)
class DiskCheck:
    """Result of the data round trip on a hot-plugged disk."""

    read_ok: bool    # the guest read the host's seeded block 0 exactly
    write_ok: bool   # the guest re-read its own block 1 exactly (direct I/O)
    detail: str


def guest_glob(path: tuple[str, ...]) -> str:
    """The sysfs directory of a function by bridge-tree path, bus numbers wildcarded:
    ("04.0", "01.0") -> /sys/devices/pci0000:00/0000:00:04.0/0000:*:01.0."""
    parts = [f"0000:00:{path[0]}"] + [f"0000:*:{p}" for p in path[1:]]
    return "/sys/devices/pci0000:00/" + "/".join(parts)


_CHILD: dict[Kind, str] = {"disk": "$d/virtio*/block/*", "nic": "$d/net/* $d/virtio*/net/*",
                           "bridge": "$d/config"}


def _seen_script(path: tuple[str, ...], kind: Kind, seconds: float) -> str:
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
    what is plugged), so threeview.snapshot(guest, hp.topology) models it.
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


IO_DIR = "/tmp/pcih-hpio"


@dataclass(frozen=True)
class IoState:
    ok: int          # completed 64 KiB synchronous writes
    errors: int      # writes that failed (the application saw an error)
    stopped: bool    # the loop ended on its own (after 3 errors) or was stopped
    error_text: str  # what dd printed for the failures


class IoLoad:
    """Synchronous writes to a hot-plugged disk in a guest background loop, for
    surprise removal: the loop holds the device open on fd 3 (a vanished /dev
    node must not turn into a regular file that `dd of=` would happily create),
    counts failures the application sees and ends by itself after three."""

    def __init__(self, guest: Guest, device: str):
        self.guest = guest
        self.device = device

    def start(self) -> None:
        script = (f"exec 3>{shlex.quote(self.device)} || exit 1\n"
                  "ok=0; err=0\n"
                  f"while [ ! -e {IO_DIR}/stop ] && [ $err -lt 3 ]; do\n"
                  f"  if dd if=/dev/zero bs=65536 count=1 conv=fsync >&3 2>>{IO_DIR}/err; "
                  "then ok=$((ok+1)); else err=$((err+1)); fi\n"
                  f"  echo \"ok=$ok err=$err\" > {IO_DIR}/state.new; "
                  f"mv {IO_DIR}/state.new {IO_DIR}/state\n"
                  "done\n"
                  f"echo stopped > {IO_DIR}/stopped\n")
        self.guest.succeed(f"rm -rf {IO_DIR}; mkdir -p {IO_DIR} && cat > {IO_DIR}/run.sh "
                           f"<<'PCIH_EOF'\n{script}PCIH_EOF\n"
                           f"echo 'ok=0 err=0' > {IO_DIR}/state")
        self.guest.succeed(f"setsid sh {IO_DIR}/run.sh </dev/null >/dev/null 2>&1 &")

    def state(self) -> IoState:
        out = self.guest.succeed(f"cat {IO_DIR}/state; test -e {IO_DIR}/stopped && "
                                 f"echo STOPPED; echo @@err; tail -5 {IO_DIR}/err 2>/dev/null;"
                                 " true")
        head, _, err = out.partition("@@err")
        fields = dict(x.split("=", 1) for x in head.split() if "=" in x)
        return IoState(int(fields.get("ok", 0)), int(fields.get("err", 0)),
                       "STOPPED" in head, err.strip())

    def wait(self, until: Callable[[IoState], bool], deadline: Deadline) -> IoState:
        while True:
            state = self.state()
            if until(state):
                return state
            if deadline.expired():
                raise DeadlineExceeded(f"{deadline.describe()}: I/O loop on {self.device} "
                                       f"is at {state}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.guest.execute(f"touch {IO_DIR}/stop")


def host_block_ok(image: Path, spec_id: str, seed: int) -> bool:
    """After the unplug: does the image hold the guest's block 1 pattern exactly?"""
    with open(image, "rb") as fh:
        fh.seek(BLOCK_SIZE)
        return fh.read(BLOCK_SIZE) == block_bytes(spec_id, seed, 1, 1)


def seeded_mac(rng: random.Random) -> str:
    """A locally administered unicast MAC from the run's random stream."""
    tail = rng.getrandbits(24)
    return f"52:54:01:{tail >> 16:02x}:{(tail >> 8) & 0xff:02x}:{tail & 0xff:02x}"


# --------------------------------------------------------------------------- three-view step check

def _keyed(changes: list[Change], before: PciView, after: PciView) -> dict[tuple[str, str], Change]:
    """{(path "04.0/01.0", field): change}: ids (QEMU, model) and paths (guest) both map."""
    names = {f.name: "/".join(f.path) for v in (before, after) for f in v.functions}
    return {(names.get(c.device, c.device), c.field): c for c in changes}


def _knows(view: PciView, where: str, field_name: str) -> bool:
    """Can VIEW show FIELD of the function at path WHERE?  (QEMU's view has no link
    fields, for example: a predicted link change cannot be looked for there.)"""
    if field_name == "present":
        return True
    if where == "root bus":
        return view.root_bus_hotplug is not None
    f = view.by_path().get(tuple(where.split("/")))
    if f is None:
        return True  # the function itself is missing: the change did not happen
    if field_name.startswith("bars["):
        return f.bars is not None
    return getattr(f, field_name, None) is not None


def step_problems(before: ThreeViews, after: ThreeViews, path: tuple[str, ...],
                  added: bool) -> list[str]:
    """What is wrong with one hotplug step, [] when it is right.

    The expectation is the model's own before/after diff (the topology plus or
    minus the device): it holds the device's presence and whatever the rules
    derive from it (a port's link status, a slot's state).  Checked both ways in
    QEMU's and the guest's diffs: every predicted change must have happened, to
    the predicted value, in each view that can show that field; and no change
    the model did not predict may appear.  After the step the three views must
    agree on the whole machine as far as they agreed before it (a plug must not
    make anything else disagree); after a plug, on the new function entirely.
    """
    where = "/".join(path)
    diff = changes(before, after)
    views = {"model": (diff.model, before.model, after.model),
             "qemu": (diff.qemu, before.qemu, after.qemu),
             "guest": (diff.guest, before.guest, after.guest)}
    expected = _keyed(*views["model"])
    problems: list[str] = []
    for name, (chs, b, a) in views.items():
        keyed = _keyed(chs, b, a)
        presence = keyed.get((where, "present"))
        if presence is None or presence.after is not added:
            problems.append(f"{name} view: {where} should be {'added' if added else 'removed'}"
                            f", diff shows {presence or 'no presence change'}")
        for key, ch in sorted(keyed.items()):
            if key not in expected:
                problems.append(f"{name} view: unexpected change {key[0]}: {ch.field}: "
                                f"{ch.before!r} -> {ch.after!r} (the model predicts none)")
        if name == "model":
            continue
        for key, want in sorted(expected.items()):
            if key == (where, "present") or not _knows(a, *key):
                continue
            got = keyed.get(key)
            if got is None or got.after != want.after:
                shown = (f"{got.before!r} -> {got.after!r}" if got is not None
                         else "no change")
                problems.append(f"{name} view: predicted change {key[0]}: {key[1]}: "
                                f"{want.before!r} -> {want.after!r} did not happen "
                                f"(the view shows {shown})")
    already = {str(d) for d in before.differences()}
    for d in after.differences():
        f = next((fn for v in (after.model, after.qemu, after.guest) for fn in v.functions
                  if fn.name == d.device), None)
        if added and f is not None and f.path == path:
            problems.append(f"three views disagree on the new function: {d}")
        elif str(d) not in already:
            problems.append(f"three views disagree after the {'plug' if added else 'unplug'}"
                            f": {d}")
    return problems
