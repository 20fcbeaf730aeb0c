"""Ask the QEMU binary what it does, once, on paused throwaway machines; cache the answer.

The facts table (facts.py) says what a version *should* do; this module asks
the binary itself wherever it can tell:

- `query-machines`: the versioned type each alias (`q35`, `pc`) stands for,
  every type offered, the deprecated ones;
- `device-list-properties pcie-root-port`: the native-hotplug property's name
  and the x-speed values described;
- `device_add` on a paused (-S) machine, per kind of bus, with ACPI bridge
  hotplug on and off: does this bus kind take a hot-added device, and QEMU's
  refusal text when not.  The QOM `hotplug-handler` link is recorded next to
  it but never decides: 10.0 names ICH9-LPC as pcie.0's handler and still
  refuses device_add there.  (7.2.22 and 10.0.2 answer the same paused as
  running; `device_del` on a paused machine is not representative, so only
  `device_add` is probed.)
- `migrate-incoming file:` on a `-incoming defer` machine: whether the
  `file:` transport exists (7.2: "unknown migration protocol").

The verdict is cached per binary identity (path, size, mtime, version) under
the cache directory, like the accelerator verdict; processes probing at once
share one probe through a file lock.
"""

from __future__ import annotations

import functools
import json
import select
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from filelock import FileLock

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError
from harness.paths import cache_root, private_dir
from harness.qemu.binary import QemuBinary
from harness.qemu.facts import MachineKind, machine_kind_of
from harness.qemu.machines import MACHINES
from harness.qemu.process import QemuProcess
from harness.qemu.qmp import Qmp, QmpCommandError

#: Bump when what is probed, or how, changes: older cache entries are ignored.
PROBE_FORMAT = "1"
PROBE_SECONDS = 30.0

#: Bus kinds probed, with the -device lines that create one (its id is the bus
#: name) and the slot a hot-added device takes there.  "root" is the machine's
#: root bus itself.
_BRIDGES: dict[str, tuple[tuple[str, ...], str, int]] = {
    "root-port": (("pcie-root-port,id=b_rp,bus=pcie.0,addr=0x2,chassis=201",), "b_rp", 0),
    "root-port-hotplug-off": (
        ("pcie-root-port,id=b_rpoff,bus=pcie.0,addr=0x3,chassis=202,hotplug=off",),
        "b_rpoff", 0),
    "pcie-pci-bridge": (("pcie-root-port,id=b_rp2,bus=pcie.0,addr=0x4,chassis=203",
                         "pcie-pci-bridge,id=b_ppb,bus=b_rp2,addr=0x0"), "b_ppb", 1),
    "pci-bridge": (("pci-bridge,id=b_pb,bus={root},addr=0x5,chassis_nr=204",), "b_pb", 1),
    "pci-bridge-shpc-off": (
        ("pci-bridge,id=b_pboff,bus={root},addr=0x6,chassis_nr=205,shpc=off",), "b_pboff", 1),
}
#: Which bus kinds exist on which machine kind.
BUS_KINDS: dict[MachineKind, tuple[str, ...]] = {
    "pc": ("root", "pci-bridge", "pci-bridge-shpc-off"),
    "q35": ("root", "root-port", "root-port-hotplug-off", "pcie-pci-bridge", "pci-bridge",
            "pci-bridge-shpc-off"),
}
_ROOT_QOM = {"pc": "/machine/i440fx/pci.0", "q35": "/machine/q35/pcie.0"}
_PROBE_DRIVER = "virtio-net-pci"  # needs no backend; romfile="" keeps firmware out of it


@dataclass(frozen=True)
class BusProbe:
    """device_add on one kind of bus of one machine kind, ACPI bridge hotplug on or off."""

    machine: str
    bus_kind: str
    acpi: bool
    accepts_device_add: bool
    refusal: str | None        # QEMU's text when it refused
    qom_handler_type: str      # QOM type of the bus's hotplug-handler link, "" for none


@dataclass(frozen=True)
class ProbedFacts:
    """What one QEMU binary answered; see the module docstring."""

    version: str
    aliases: tuple[tuple[str, str], ...]  # ("q35", "pc-q35-10.0")
    machine_types: tuple[str, ...]
    deprecated: tuple[str, ...]
    native_hotplug_property: tuple[str, bool] | None  # (name, `on` hides the capability)
    port_link_speeds: tuple[str, ...]
    file_migration_uri: bool
    buses: tuple[BusProbe, ...]

    def resolve_alias(self, machine: str) -> str:
        """The versioned type an alias stands for; other names unchanged."""
        return dict(self.aliases).get(machine, machine)

    def bus(self, machine: MachineKind, bus_kind: str, acpi: bool = True) -> BusProbe:
        for probe in self.buses:
            if (probe.machine, probe.bus_kind, probe.acpi) == (machine, bus_kind, acpi):
                return probe
        raise KeyError(f"no probe for {bus_kind} on {machine} (acpi={acpi})")

    def hotplug_accepted(self, machine: MachineKind, bus_kind: str, acpi: bool = True) -> bool:
        return self.bus(machine, bus_kind, acpi).accepts_device_add

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProbedFacts:
        data = json.loads(text)
        hp = data["native_hotplug_property"]
        return cls(version=data["version"],
                   aliases=tuple((a, b) for a, b in data["aliases"]),
                   machine_types=tuple(data["machine_types"]),
                   deprecated=tuple(data["deprecated"]),
                   native_hotplug_property=(hp[0], bool(hp[1])) if hp else None,
                   port_link_speeds=tuple(data["port_link_speeds"]),
                   file_migration_uri=bool(data["file_migration_uri"]),
                   buses=tuple(BusProbe(**b) for b in data["buses"]))


# --------------------------------------------------------------------------- a paused QEMU

@contextmanager
def paused_qemu(binary: QemuBinary, args: tuple[str, ...], deadline: Deadline) -> Iterator[Qmp]:
    """A throwaway `-S` QEMU with QMP, killed (and its files removed) on exit."""
    run = private_dir("pcih-probe-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(run / "qmp.sock"))
    listener.listen(1)
    argv = [str(binary.path), "-S", "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", "tcg", "-chardev", f"socket,id=qmp,path={run / 'qmp.sock'}",
            "-mon", "chardev=qmp,mode=control", *args]
    process = QemuProcess(argv, run)
    qmp: Qmp | None = None
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], 0.05)
            if ready:
                conn, _ = listener.accept()
                break
            if not process.alive():
                raise process.exited_error("the facts probe's start-up")
            if deadline.expired():
                raise DeadlineExceeded(f"{deadline.describe()}: QEMU never connected QMP",
                                       tail=process.stderr_text()[-2000:])
        try:
            qmp = Qmp(conn, run / "qmp.log", name="probe")
        except Exception as exc:  # noqa: BLE001 - qemu.qmp's ConnectError and friends
            # QEMU connected QMP, then rejected its command line (a wrapper adding a
            # bad -device, say): its exit status and stderr, not "EOF".
            process.wait(Deadline(3, "QEMU exit", scaled=False))
            if not process.alive():
                raise process.exited_error("the facts probe's start-up") from None
            raise HarnessError(f"QMP negotiation with QEMU failed: {exc}") from None
        yield qmp
    finally:
        listener.close()
        if qmp is not None:
            qmp.close()
        process.kill(grace_s=1.0)
        shutil.rmtree(run, ignore_errors=True)


def _try(qmp: Qmp, command: str, args: dict[str, Any]) -> str | None:
    """None when QEMU accepted the command, else its error text."""
    try:
        qmp.execute(command, args)
        return None
    except QmpCommandError as exc:
        return exc.desc


def _handler_type(qmp: Qmp, bus_path: str) -> str:
    try:
        handler = qmp.execute("qom-get", {"path": bus_path, "property": "hotplug-handler"})
        return str(qmp.execute("qom-get", {"path": handler, "property": "type"})) if handler \
            else ""
    except QmpCommandError:
        return "?"


def _probe_buses(binary: QemuBinary, kind: MachineKind, acpi: bool,
                 deadline: Deadline) -> list[BusProbe]:
    machine = MACHINES[kind]
    args: list[str] = ["-machine", kind]
    if not acpi:
        args += ["-global", machine.bridge_acpi_global]
    for bus_kind in BUS_KINDS[kind]:
        if bus_kind != "root":
            for line in _BRIDGES[bus_kind][0]:
                args += ["-device", line.format(root=machine.root_bus)]
    out = []
    with paused_qemu(binary, tuple(args), deadline) as qmp:
        for n, bus_kind in enumerate(BUS_KINDS[kind]):
            if bus_kind == "root":
                bus, slot, path = machine.root_bus, 0x10, _ROOT_QOM[kind]
            else:
                _, bus, slot = _BRIDGES[bus_kind]
                path = f"/machine/peripheral/{bus}/{bus}"
            refusal = _try(qmp, "device_add", {"driver": _PROBE_DRIVER, "id": f"probe{n}",
                                               "bus": bus, "addr": f"{slot:#x}",
                                               "romfile": ""})
            out.append(BusProbe(kind, bus_kind, acpi, refusal is None, refusal,
                                _handler_type(qmp, path)))
    return out


def probe(binary: QemuBinary, deadline: Deadline | None = None) -> ProbedFacts:
    """Ask the binary (about five short-lived paused QEMUs); no cache."""
    deadline = deadline or Deadline(PROBE_SECONDS, f"probing QEMU {binary.version}")
    with paused_qemu(binary, ("-machine", "q35", "-incoming", "defer"), deadline) as qmp:
        machines = qmp.execute("query-machines")
        props = {p["name"]: p for p in qmp.execute("device-list-properties",
                                                   {"typename": "pcie-root-port"})}
        refusal = _try(qmp, "migrate-incoming", {"uri": "file:/nonexistent-pcih/x"}) or ""
    file_uri = "unknown migration protocol" not in refusal
    hotplug_prop: tuple[str, bool] | None = None
    if "x-do-not-expose-native-hotplug-cap" in props:
        hotplug_prop = ("x-do-not-expose-native-hotplug-cap", True)
    elif "x-native-hotplug" in props:
        hotplug_prop = ("x-native-hotplug", False)
    speed = props.get("x-speed", {}).get("description", "")
    buses: list[BusProbe] = []
    for kind in BUS_KINDS:
        for acpi in (True, False):
            buses += _probe_buses(binary, kind, acpi, deadline)
    return ProbedFacts(
        version=binary.version,
        aliases=tuple(sorted((m["alias"], m["name"]) for m in machines if m.get("alias"))),
        machine_types=tuple(sorted(m["name"] for m in machines)),
        deprecated=tuple(sorted(m["name"] for m in machines if m.get("deprecated"))),
        native_hotplug_property=hotplug_prop,
        port_link_speeds=tuple(s for s in speed.split("/") if s),
        file_migration_uri=file_uri, buses=tuple(buses))


@functools.cache
def probed_facts(binary: QemuBinary) -> ProbedFacts:
    """The binary's probed facts: from the cache when this very binary was probed."""
    directory = cache_root() / "facts"
    directory.mkdir(parents=True, exist_ok=True)
    key = f"{PROBE_FORMAT}|{binary.identity()}"
    name = "".join(c if c.isalnum() else "_" for c in str(binary.path))[-60:]
    path = directory / f"{name}.json"
    with FileLock(str(directory / f"{name}.lock")):
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return ProbedFacts.from_json(json.dumps(cached["facts"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            facts = probe(binary)
        except HarnessError as exc:
            raise HarnessError(f"could not ask QEMU {binary.version} ({binary.path}) what it "
                               f"supports: {exc.message}",
                               fix="check that the binary starts with -machine q35 -S",
                               tail=exc.tail) from None
        path.write_text(json.dumps({"key": key, "facts": json.loads(facts.to_json())}))
        return facts


def root_bus_hotplug(binary: QemuBinary, machine: str) -> bool | None:
    """Whether BINARY takes device_add on MACHINE's root bus (probed by behaviour);
    None for a machine type the harness does not model."""
    kind = machine_kind_of(machine)
    return None if kind is None else probed_facts(binary).hotplug_accepted(kind, "root")
