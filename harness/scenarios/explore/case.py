"""A found case: the minimal failing topology as an ordinary topology file.

The file is a topology TOML (`pci-harness compare FILE` boots it as it is)
with an `[explore]` table the topology loader leaves alone: the difference,
the QEMU it was found on, the seed and example index, the replay command and,
once adopted as a regression test, the expected outcome per QEMU release
series (`[explore.expect]`, "7.2" = "fails": a known gap that must still show;
"passes": it must agree).
"""

from __future__ import annotations

import datetime
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.scenarios.explore.check import Outcome, OutcomeSignature
from harness.topology.data import Topology
from harness.topology.load import topology_from_dict

EXPECTED = ("passes", "fails")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def _size(size: int) -> str:
    mib = 1024 * 1024
    return f"{size // mib}M" if size % mib == 0 else str(size)


def topology_toml(topology: Topology) -> str:
    """The topology file of TOPOLOGY (load_topology reads it back equal)."""
    lines = [f"machine = {_value(topology.machine)}", f"memory = {_value(_size(topology.memory))}"]
    if topology.ahci_disk is not None:
        lines.append(f"ahci_disk = {_value(_size(topology.ahci_disk))}")
    if not topology.acpi_hotplug:
        lines.append("acpi_hotplug = false")
    for dev in topology.devices:
        lines += ["", "[[device]]", f"id = {_value(dev.id)}", f"driver = {_value(dev.driver)}"]
        if dev.bus is not None:
            lines.append(f"bus = {_value(dev.bus)}")
        if dev.addr is not None:
            lines.append(f"addr = {_value(str(dev.addr))}")
        if dev.disk is not None:
            lines.append(f"disk = {_value(_size(dev.disk))}")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in dev.props]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    topology: Topology
    meta: dict[str, Any]

    @property
    def signature(self) -> OutcomeSignature:
        return frozenset(tuple(s) for s in self.meta.get("signature", []))

    def expected(self, qemu_version: str) -> str | None:
        """"passes" / "fails" for this QEMU's release series, None when not stated."""
        series = ".".join(qemu_version.split(".")[:2])
        value = self.meta.get("expect", {}).get(series)
        return str(value) if value is not None else None


def case_toml(outcome: Outcome, meta: dict[str, Any]) -> str:
    head = [f"# Found by pci-harness explore: {outcome.summary()}",
            f"# Replay: {meta.get('replay', '')}", ""]
    body = topology_toml(outcome.topology)
    table = ["", "[explore]"]
    expect = meta.get("expect")
    for key, value in meta.items():
        if key != "expect" and value is not None:
            table.append(f"{_key(key)} = {_value(value)}")
    if expect:
        table += ["", "[explore.expect]"] + [f"{_key(k)} = {_value(v)}"
                                             for k, v in sorted(expect.items())]
    return "\n".join(head) + body + "\n".join(table) + "\n"


def problem_lines(outcome: Outcome) -> list[str]:
    return [str(p.get("text", "")) for p in outcome.problems] or [outcome.message]


def outcome_meta(outcome: Outcome, *, qemu: str, qemu_binary: str, seed: int | None,
                 index: int | None, replay: str, original_devices: int,
                 shrink: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": outcome.kind,
        "difference": "; ".join(problem_lines(outcome))[:2000],
        "signature": sorted([list(s) for s in outcome.signature]),
        "qemu": qemu, "qemu_binary": qemu_binary, "seed": seed, "index": index,
        "found": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "devices": len(outcome.topology.devices), "original_devices": original_devices,
        "replay": replay, **{f"shrink_{k}": v for k, v in shrink.items()},
    }


def save_case(directory: Path, outcome: Outcome, meta: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{outcome.kind}-{outcome.topology.cache_key()[:10]}.toml"
    path = directory / name
    path.write_text(case_toml(outcome, {**meta, "replay": meta["replay"].replace(
        "{file}", str(path))}))
    return path


def load_case(path: Path) -> Case:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"case file {path} does not exist",
                        fix="give a file `pci-harness explore --save DIR` wrote") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}", fix="fix the line given") from None
    meta = data.get("explore")
    if not isinstance(meta, dict):
        raise UserError(f"{path} has no [explore] table: it is a topology, not a found case",
                        fix="boot a plain topology with `pci-harness compare FILE`")
    return Case(topology_from_dict(data, source=str(path)), meta)


def adopt(path: Path, directory: Path, qemu_version: str, expected: str) -> Path:
    """Copy case PATH into DIRECTORY (the regression cases) with the outcome
    expected on this QEMU's release series."""
    if expected not in EXPECTED:
        raise UserError(f"expected outcome {expected!r}", fix=f"use one of {EXPECTED}")
    case = load_case(path)
    series = ".".join(qemu_version.split(".")[:2])
    meta = dict(case.meta)
    meta["expect"] = {**meta.get("expect", {}), series: expected}
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / path.name
    text = path.read_text()
    text = re.sub(r"\n\[explore\.expect\]\n(?:[^\[\n].*\n?)*", "\n", text).rstrip("\n") + "\n"
    # The replay now names the kept copy, on whatever QEMU the reader gives.
    replay = f"pci-harness explore --replay {out}"
    text = re.sub(r"(?m)^replay = .*$", f"replay = {_value(replay)}", text)
    text = re.sub(r"(?m)^# Replay: .*$", f"# Replay: {replay}", text)
    text += "\n[explore.expect]\n" + "".join(
        f"{_key(k)} = {_value(v)}\n" for k, v in sorted(meta["expect"].items()))
    out.write_text(text)
    load_case(out)  # what was written reads back
    return out

