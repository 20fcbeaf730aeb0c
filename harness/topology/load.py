"""TOML (or a dict of the same shape) -> Topology, and the checks made before QEMU starts.

File format::

    machine = "q35"        # pc | q35 | pc-q35-7.2 | pc-i440fx-7.2 ...
    memory = "512M"
    ahci_disk = "64M"      # q35 only: a disk on the built-in AHCI (00:1f.2), port 0
    acpi_hotplug = false   # optional: native PCIe / SHPC hotplug instead of ACPI
    [[device]]
    id = "rp1"             # letters, digits, "-" and "_"; unique; "mgmt" is reserved
    driver = "pcie-root-port"
    bus = "pcie.0"         # default: the root bus; a bridge's bus is named by its id
    addr = "2.0"           # optional SLOT.FUNCTION (hex slot), else the first free slot
    disk = "64M"           # virtio-blk-pci: its backing; ich9-ahci: an ide-hd on port 0;
                           # virtio-scsi-pci: a scsi-hd at target 0 (render.py)
    chassis = 1            # every other key is a -device property
    [device.expect]        # optional overrides of the model (names: pciview.EXPECT_KEYS)
    link_width = 2

Why the AHCI disk is a top-level key: the built-in AHCI is part of the q35 machine,
not a topology device, so it gets no id, no addr and no bus of its own; one key says
"give the machine's own controller a disk" and is refused on pc, which has none.
A disk on an added controller uses `disk =` on the ich9-ahci device instead.

Validation keeps to rules that are certain (the spec, or QEMU refusing the line);
"will QEMU accept this placement" is left to scenarios/where.py.  Every error names
the device, the file and the fix.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import TopologyError
from harness.topology.data import Address, Device, ExpectValue, PropValue, Topology, parse_size
from harness.topology.placement import validate
from harness.views.pciview import EXPECT_KEYS, is_expect_key

TOP_KEYS = ("machine", "memory", "ahci_disk", "acpi_hotplug", "device")
# Tables a topology file may carry that are not the machine: a found case's
# [explore] table (scenarios/explore/case.py).  The machine ignores them.
META_KEYS = ("explore",)
_DEVICE_KEYS = ("id", "driver", "bus", "addr", "disk", "expect")


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TopologyError(f"topology file {path} does not exist",
                            fix="check the path (examples are in topologies/)") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path} is not valid TOML: {exc}",
                            fix="fix the syntax at the line given") from None
    return topology_from_dict(data, source=str(path))


def topology_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> Topology:
    """Build and validate a Topology from the TOML structure (also handy in tests)."""
    where = f" in {source}" if source else ""
    unknown = sorted(set(data) - set(TOP_KEYS) - set(META_KEYS))
    if unknown:
        raise TopologyError(f"unknown top-level key(s) {', '.join(map(repr, unknown))}{where}",
                            fix=f"use only {', '.join(TOP_KEYS)}; device properties go in a "
                                "[[device]] table")
    machine = data.get("machine", "q35")
    if not isinstance(machine, str):
        raise TopologyError(f"machine must be a string{where}", fix='write machine = "q35"')
    memory = parse_size(data.get("memory", "512M"), what=f"memory{where}")
    ahci = data.get("ahci_disk")
    ahci_disk = parse_size(ahci, what=f"ahci_disk{where}") if ahci is not None else None
    acpi_hotplug = data.get("acpi_hotplug", True)
    if not isinstance(acpi_hotplug, bool):
        raise TopologyError(f"acpi_hotplug must be true or false{where}",
                            fix="write acpi_hotplug = false")
    raw_devices = data.get("device", [])
    if not isinstance(raw_devices, list):
        raise TopologyError(f"'device' must be an array of tables{where}",
                            fix="write each device as a [[device]] table")
    devices = tuple(_device(i, raw, where) for i, raw in enumerate(raw_devices))
    topology = Topology(machine=machine, memory=memory, devices=devices, ahci_disk=ahci_disk,
                        acpi_hotplug=acpi_hotplug, source=source)
    validate(topology)
    return topology


def _device(index: int, raw: Any, where: str) -> Device:
    if not isinstance(raw, Mapping):
        raise TopologyError(f"device #{index + 1}{where} is not a table",
                            fix="write each device as a [[device]] table")
    dev_id = raw.get("id")
    name = f"device {dev_id!r}" if isinstance(dev_id, str) else f"device #{index + 1}"
    what = f"{name}{where}"
    for key in ("id", "driver"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            raise TopologyError(f"{what} has no {key}",
                                fix=f'add {key} = "..." to the [[device]] table')
    bus = raw.get("bus")
    if bus is not None and not isinstance(bus, str):
        raise TopologyError(f"{what}: bus must be a string", fix='write bus = "rp1"')
    addr = Address.parse(raw["addr"], what=what) if "addr" in raw else None
    disk = parse_size(raw["disk"], what=f"{what}: disk") if "disk" in raw else None
    props: list[tuple[str, PropValue]] = []
    for key, value in raw.items():
        if key in _DEVICE_KEYS:
            continue
        if not isinstance(value, str | int | bool):
            raise TopologyError(f"{what}: property {key!r} has value {value!r}",
                                fix="-device properties are strings, integers or booleans; "
                                    'quote other values, for example "x-speed" = "2_5"')
        props.append((key, value))
    expect = _expect(raw.get("expect", {}), what)
    return Device(id=raw["id"], driver=raw["driver"], bus=bus, addr=addr, props=tuple(props),
                  disk=disk, expect=expect)


def _expect(raw: Any, what: str) -> tuple[tuple[str, ExpectValue], ...]:
    if not isinstance(raw, Mapping):
        raise TopologyError(f"{what}: expect must be a table", fix="write [device.expect]")
    out: list[tuple[str, ExpectValue]] = []
    for key, value in raw.items():
        if not is_expect_key(key):
            raise TopologyError(f"{what}: unknown expect key {key!r}",
                                fix=f"use one of {', '.join(EXPECT_KEYS)}, or barN_size / "
                                    "barN_kind / barN_64bit / barN_prefetch (N = 0-6)")
        if isinstance(value, list):
            out.append((key, tuple(str(v) for v in value)))
        elif isinstance(value, str | int | float | bool):
            out.append((key, value))
        else:
            raise TopologyError(f"{what}: expect {key!r} has value {value!r}",
                                fix="use a string, number, boolean or list of strings")
    return tuple(out)
