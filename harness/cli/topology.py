"""`pci-harness compare` and `pci-harness where`: thin faces over threeview and where.

compare TOPOLOGY  boots the guest, takes the three views (threeview.collect_views) and
                  prints every difference as a table; status 0 when model, QEMU
                  and guest agree (or differ only where a known QEMU gap of this
                  QEMU version says so: `known_failures` in --json, with the
                  reason), 1 when they differ, 2 for bad input (the
                  topology is validated before QEMU starts; a command line QEMU
                  refuses is reported with QEMU's message, attributed to the
                  device it names).
where DRIVER      starts QEMU paused (-S, no guest) and asks the connectivity
                  oracle (scenarios/where.py) where DRIVER can be connected.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.errors import QemuExited, UserError
from harness.factory import GuestFactory
from harness.guest.running import Guest
from harness.qemu.facts import parse_version
from harness.qemu.gap import KnownGap
from harness.qemu.known import gap_for_difference
from harness.scenarios.threeview import ThreeViews, collect_views
from harness.scenarios.where import WhereAnswer, where
from harness.topology import Topology, default_topology, load_topology, validate
from harness.topology.data import machine_kind
from harness.topology.refusal import attribute_refusal
from harness.views import Difference
from harness.views.compare import format_value

DEFAULT_MACHINES = ("pc", "q35")


def topology_argument(text: str) -> Topology:
    """A topology file, or "pc"/"q35" (no such file) for that machine's default topology."""
    if text in DEFAULT_MACHINES and not Path(text).exists():
        return default_topology(text)
    return load_topology(text)


# --------------------------------------------------------------------------- compare

def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def differences_table(diffs: list[Difference]) -> str:
    rows = [[d.device, d.field, format_value(d.model), format_value(d.qemu),
             format_value(d.guest)] for d in diffs]
    return _table(rows, ["device", "field", "model", "QEMU", "guest"])


def _difference(d: Difference) -> dict[str, Any]:
    return {"device": d.device, "field": d.field, "model": d.model, "qemu": d.qemu,
            "guest": d.guest}


def compare_result(views: ThreeViews, trouble: list[str],
                   known: Callable[[Difference], KnownGap | None] = lambda d: None
                   ) -> dict[str, Any]:
    """The verdict: `differences` lists only what nobody expected; a difference a
    known QEMU gap explains on this QEMU goes under `known_failures` with its
    reason and does not fail the compare."""
    unexpected: list[Difference] = []
    known_failures: list[dict[str, Any]] = []
    for d in views.differences():
        gap = known(d)
        if gap is None:
            unexpected.append(d)
        else:
            known_failures.append(_difference(d) | {"gap": gap.id, "seed": gap.seed,
                                                    "reason": gap.reason})
    failures = [str(d) for d in unexpected] + [f"guest console: {line}" for line in trouble]
    return {
        "ok": not failures,
        "devices": views.function_count,
        "differences": [_difference(d) for d in unexpected],
        "known_failures": known_failures,
        "failures": failures,
    }


def known_gap_of(topology: Topology, qemu_version: str,
                 machine: str) -> Callable[[Difference], KnownGap | None]:
    """Looks a difference up in the known-gap table for this QEMU and (versioned)
    machine type; the device's driver comes from the topology."""
    drivers = {d.id: d.driver for d in topology.devices}
    version = parse_version(qemu_version)

    def lookup(d: Difference) -> KnownGap | None:
        return gap_for_difference(drivers.get(d.device), d.field, d.qemu, version, machine,
                                  ancestors=topology.ancestors(d.device))

    return lookup


def cmd_compare(args: argparse.Namespace) -> int:
    topology = topology_argument(args.topology)  # TopologyError (status 2) before QEMU
    started = time.monotonic()
    taken: list[ThreeViews] = []

    def body(run: VerbRun) -> Result:
        factory = run.factory
        progress(f"booting the {topology.machine} guest of {args.topology} "
                 f"({factory.accel.name})")
        t0 = time.monotonic()
        # A command line QEMU refuses comes back naming the topology's device.
        guest = factory.launch(topology, run.artifacts)
        try:
            boot_s = time.monotonic() - t0
            t1 = time.monotonic()
            views = collect_views(guest)
            views_s = time.monotonic() - t1
            assert guest.console is not None
            trouble = guest.console.trouble()
        finally:
            guest.shutdown()
        views.save(run.artifacts)
        taken.append(views)
        known = known_gap_of(topology, factory.binary.version,
                             factory.binary.resolve_machine(topology.machine))
        result = compare_result(views, trouble, known)
        result.update(topology=args.topology, machine=topology.machine,
                      accel=factory.accel.name, qemu_version=factory.binary.version,
                      timings={"boot_s": round(boot_s, 3), "views_s": round(views_s, 3),
                               "total_s": round(time.monotonic() - started, 3),
                               **{f"{k}_s": round(v, 3) for k, v in views.seconds.items()}})
        return result

    return run_verb(args, "compare", body, lambda result: _print_compare(result, taken[0]),
                    json_default=format_value)


def _print_compare(result: dict[str, Any], views: ThreeViews) -> None:
    t = result["timings"]
    head = (f"{result['topology']} ({result['machine']}, QEMU {result['qemu_version']}, "
            f"{result['accel']}): {result['devices']} PCI functions, boot {t['boot_s']:.1f} s, "
            f"views {t['views_s']:.1f} s")
    known = {(k["device"], k["field"]): k for k in result["known_failures"]}
    diffs = [d for d in views.differences() if (d.device, d.field) not in known]
    if diffs:
        print(f"{head}: {len(diffs)} difference(s)")
        print(differences_table(diffs))
    else:
        print(f"{head}: model, QEMU and guest agree" + (
            f" but for {len(known)} known QEMU gap(s)" if known else ""))
    for k in known.values():
        print(f"known QEMU gap {k['gap']}: {k['device']}: {k['field']}: {k['reason']}")
    for failure in result["failures"]:
        if failure.startswith("guest console: "):
            print(failure)


# --------------------------------------------------------------------------- where

def where_topology(args: argparse.Namespace) -> Topology:
    """--topology FILE, else the bare --machine (default q35): no devices but the
    management NIC, so every other slot is free."""
    if args.topology:
        topology = load_topology(args.topology)
        if args.machine and machine_kind(args.machine) != topology.kind:
            raise UserError(f"--machine {args.machine} contradicts {args.topology}, which "
                            f"builds a {topology.machine} machine",
                            fix="leave --machine out with --topology")
        return topology
    topology = Topology(machine=args.machine or "q35")
    validate(topology)
    return topology


def ask_where(factory: GuestFactory, topology: Topology, driver: str, artifacts: Path, *,
              hotplug: bool, device_id: str | None = None) -> WhereAnswer:
    """Start `topology` paused (-S, no guest), ask where(), stop QEMU."""
    guest = Guest(factory.plan(topology, boot_guest=False, extra_args=("-S",)), artifacts,
                  name="where")
    try:
        try:
            guest.launch()
        except QemuExited as exc:
            raise attribute_refusal(topology, exc) from None
        assert guest.qmp is not None
        return where(guest.qmp, driver, hotplug_only=hotplug, device_id=device_id,
                     root_hotplug=guest.root_bus_hotplug())
    finally:
        guest.shutdown()


def _slots(slots: list[int]) -> str:
    """[1, 2, 3, 5] -> "0x1-0x3,0x5"."""
    parts: list[str] = []
    i = 0
    while i < len(slots):
        j = i
        while j + 1 < len(slots) and slots[j + 1] == slots[j] + 1:
            j += 1
        parts.append(f"{slots[i]:#x}" if i == j else f"{slots[i]:#x}-{slots[j]:#x}")
        i = j + 1
    return ",".join(parts) or "-"


def _print_where(answer: dict[str, Any], topology: Topology, hotplug: bool) -> None:
    what = "hot-plugged (device_add)" if hotplug else "connected"
    print(f"{answer['driver']} can be {what} on {len(answer['buses'])} bus(es) of this "
          f"{topology.machine} machine:")
    rows = [[b["bus"], b["kind"], _slots(b["free_slots"]), b["hotplug"] or "none",
             b["secondary_bus_name"] or "-"] for b in answer["buses"]]
    if rows:
        print(_table(rows, ["bus", "kind", "free slots", "hotplug", "creates bus"]))
    for b in answer["buses"]:
        if b["note"]:
            print(f"  {b['bus']}: {b['note']}")
    if answer["excluded"]:
        print("not there:")
        for e in answer["excluded"]:
            who = ("QEMU refuses it" if e["refused_by"] == "qemu"
                   else "the PCI/PCIe rules forbid it; QEMU may accept it")
            print(f"  {e['bus']}: {e['reason']} [{who}]")


def cmd_where(args: argparse.Namespace) -> int:
    topology = where_topology(args)  # bad input fails before QEMU starts

    def body(run: VerbRun) -> Result:
        answer = ask_where(run.factory, topology, args.driver, run.artifacts,
                           hotplug=args.hotplug, device_id=args.id).to_dict()
        return {**answer, "ok": True, "machine": topology.machine,
                "hotplug_only": args.hotplug, "failures": []}

    return run_verb(args, "where", body, lambda answer: _print_where(answer, topology,
                                                                     args.hotplug))


def register(subparsers: Any) -> None:
    compare = subparsers.add_parser(
        "compare", help="boot a topology and compare model, QEMU and guest views",
        description="Boot the guest of TOPOLOGY and compare, for every PCI function, what "
                    "the model predicts, what QEMU reports and what the guest sees. "
                    "Exit 0 when all agree, 1 when they differ, 2 for bad input.")
    compare.add_argument("topology", metavar="TOPOLOGY",
                         help="a topology file (see topologies/), or pc / q35 for the "
                              "default machine")
    add_common_options(compare)
    compare.set_defaults(func=cmd_compare)

    where_p = subparsers.add_parser(
        "where", help="list the buses where a PCI device can be connected",
        description="Start QEMU paused and ask it where DRIVER can be connected: bus, kind, "
                    "free slots, hotplug mechanism and the bus a bridge creates.")
    where_p.add_argument("driver", metavar="DRIVER", help="a -device driver, e.g. e1000e")
    where_p.add_argument("--topology", metavar="FILE", help="the machine to ask about "
                         "(default: the bare --machine)")
    where_p.add_argument("--machine", help="pc, q35 or a versioned type (default q35)")
    where_p.add_argument("--hotplug", action="store_true",
                         help="only buses that accept device_add now")
    where_p.add_argument("--id", help="the id the new device will get (names the bus a "
                         "bridge creates)")
    add_common_options(where_p)
    where_p.set_defaults(func=cmd_where)
