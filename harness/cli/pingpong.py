"""`pci-harness pingpong`: migrate a guest under disk load back and forth.

Exit status 0 when every hop and the final data verification pass, 1 at the
first failed hop (one paragraph on stderr naming the hop and kind; the
artifact directory is kept with reproduce.sh), 2 when the run could not be
made at all (bad options, no QEMU, a guest that never booted).

SIGINT and SIGTERM end the run like a limit reached: the current hop ends,
the final checks run, the summary (and with --json the JSON object) is
printed, and the status is what the checks found.  A second signal skips the
final checks: the run is then not verified (exit 1, "incomplete" says why).
A run in which no hop ran (--max-time used up by the boot) is not ok either.
The QEMUs die either way.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from harness.cli.common import add_common_options
from harness.cli.runner import Result, VerbRun, progress, run_verb
from harness.cli.switching import (
    add_switch_options,
    boundaries,
    sweep_hops,
    switch_argv,
    switch_plan,
)
from harness.errors import UserError
from harness.qemu.machines import machine_facts
from harness.scenarios.migration.hop import shared_machine
from harness.scenarios.migration.loads import needs_disks, parse_loads
from harness.scenarios.migration.pingpong import (
    PingPong,
    PingPongOptions,
    PingPongResult,
    disk_targets,
    write_reproduce,
)
from harness.stats import latency
from harness.topology import Topology, load_topology, topology_from_dict

DISK_SIZE = "64M"


def build_topology(machine: str, disk: str) -> Topology:
    """The built-in ping-pong machines: q35 uses its own AHCI (00:1f.2); pc gets an
    ich9-ahci behind a pci-bridge (bridged DMA is the less travelled path); both get a
    virtio-blk on the root bus."""
    facts = machine_facts(machine)
    data: dict[str, Any] = {"machine": machine, "device": []}
    if disk in ("ahci", "both"):
        if facts.builtin_ahci_bus is not None:
            data["ahci_disk"] = DISK_SIZE
        else:
            data["device"] += [
                {"id": "br1", "driver": "pci-bridge", "addr": "4.0", "chassis_nr": 1},
                {"id": "sata1", "driver": "ich9-ahci", "bus": "br1", "addr": "1.0",
                 "disk": DISK_SIZE}]
    if disk in ("virtio-blk", "both"):
        data["device"].append({"id": "vblk1", "driver": "virtio-blk-pci", "disk": DISK_SIZE})
    return topology_from_dict(data, source=f"pingpong --machine {machine} --disk {disk}")


def summary(result: PingPongResult, seed: int) -> dict[str, Any]:
    hops = [r.stats.total_s for r in result.records]
    downs = [r.stats.downtime_ms for r in result.records if r.stats.downtime_ms is not None]
    final_mib = sum(v.bytes for v in result.final.values()) / 2**20
    final_files = sum(v.files for v in result.final.values())
    kept = [k.as_dict() for k in result.kept_states]
    out: dict[str, Any] = {
        "ok": result.ok, "hops": len(result.records), "seed": seed,
        "failures": ([result.failure.describe()] if result.failure is not None
                     else [result.incomplete] if result.incomplete else []),
        "incomplete": result.incomplete,
        "hop_s": latency(hops, 3),
        "downtime_ms": {"p50": latency(downs, 3)["p50"], "max": _r(max(downs, default=None))},
        "boot_s": _r(result.boot_s), "login_s": _r(result.login_s), "writes": result.writes,
        "verified_blocks": result.verified_blocks,
        # every check's read-back, after the hops and at the end
        "verified_mib": round(sum(r.verified_mib for r in result.records) + final_mib, 2),
        "verified_files": sum(r.verified_files for r in result.records) + final_files,
        "verified_pages": sum(r.verified_pages for r in result.records)
        + (result.final["memory"].units if "memory" in result.final else 0),
        "verify_s": latency([r.verify_s for r in result.records], 3),
        "final_checks": result.final_checks,
        "final": {"verified_mib": round(final_mib, 2), "verified_files": final_files,
                  "by_load": {k: {**v.__dict__, "seconds": round(v.seconds, 3)}
                              for k, v in result.final.items()}},
        "loads": result.load_summaries,
        "injected": result.injected,
        "stopped_by": result.stopped_by,
        "kept_states": kept,
        "per_hop": [r.as_dict() for r in result.records],
        "notes": result.notes,
        "artifacts": str(result.artifacts),
    }
    if result.failure is not None:
        f = result.failure
        out["failure"] = {"hop": f.hop, "kind": f.kind, "detail": f.detail,
                          "artifacts": str(result.artifacts)}
    return out


def directions(result: PingPongResult, src: str, dst: str) -> dict[str, dict[str, Any]]:
    """Cross-version hops per direction: odd hops load on the destination QEMU
    (`src -> dst`), even hops come back (`dst -> src`).  `failed` names the
    direction of the hop that failed, so a verdict says which way broke."""
    out: dict[str, dict[str, Any]] = {}
    for name, parity in ((f"{src} -> {dst}", 1), (f"{dst} -> {src}", 0)):
        done = [r for r in result.records if r.stats.hop % 2 == parity]
        failed = result.failure is not None and result.failure.hop % 2 == parity
        out[name] = {"hops": len(done), "failed": failed,
                     "hop_s": latency([r.stats.total_s for r in done], 3)}
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reproduce_argv(args: argparse.Namespace, seed: int, topology_copy: Path | None,
                    hops: int | None) -> list[str]:
    """The command that replays the run up to hop HOPS (None: without --hops and
    the switch options, the base of a one-boundary replay)."""
    argv = [sys.executable, "-m", "harness", "pingpong", "--machine", args.machine,
            *(["--hops", str(hops)] if hops is not None else []),
            "--disk", args.disk, "--load", args.load,
            "--transport", args.transport, "--seed", str(seed), "--accel", args.accel,
            "--timeout-multiplier", str(args.timeout_multiplier), "--keep-artifacts"]
    if topology_copy is not None:
        argv += ["--topology", str(topology_copy)]
    if args.dst_qemu:
        argv += ["--dst-qemu", args.dst_qemu]
    if args.qemu_binary:
        argv += ["--qemu-binary", args.qemu_binary]
    argv += ["--memory-mib", str(args.memory_mib), "--memory-rate", str(args.memory_rate)]
    if args.compare_ram is not None:
        argv.append("--compare-ram" if args.compare_ram else "--no-compare-ram")
    for inject in args.inject or ():
        argv += ["--inject", inject]
    return argv + (switch_argv(args) if hops is not None else [])


def _parse_inject(text: str) -> tuple[str, int]:
    kind, _, hop = text.partition("@")
    if kind not in ("write", "mixed", "memory", "fs") or not hop.isdigit() or int(hop) < 1:
        raise UserError(f"--inject {text!r}: expected LOAD@HOP, e.g. memory@2",
                        fix="give one of write, mixed, memory, fs and a hop number from 1")
    return kind, int(hop)


class _Stopper:
    """SIGINT/SIGTERM: the first asks the run to stop after its current step, the
    second interrupts it (KeyboardInterrupt, caught by the run)."""

    def __init__(self) -> None:
        self.runner: PingPong | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.runner is None:
            raise KeyboardInterrupt(name)
        if self.count == 1:
            progress(f"{name}: the run stops after the current step")
            self.runner.request_stop(name)
            return
        raise KeyboardInterrupt(name)


def cmd_pingpong(args: argparse.Namespace) -> int:
    from harness.qemu.binary import find_qemu

    if args.hops < 1 or (args.max_hops is not None and args.max_hops < 1):
        raise UserError("--hops and --max-hops must be at least 1")
    topology = load_topology(args.topology) if args.topology else build_topology(args.machine,
                                                                                 args.disk)
    loads = parse_loads(args.load)
    injects = tuple(_parse_inject(text) for text in args.inject or ())
    for kind, _ in injects:
        if kind not in loads:
            raise UserError(f"--inject {kind}@...: the {kind} load is not running",
                            fix=f"add {kind} to --load")
    if args.keep_states < 0 or args.memory_mib < 2 or args.memory_rate < 0:
        raise UserError("--keep-states and --memory-rate cannot be negative, --memory-mib "
                        "must be at least 2")
    kinds = ("ahci", "virtio-blk") if args.disk == "both" else (args.disk,)
    targets = disk_targets(topology, kinds) if needs_disks(loads) else ()
    if needs_disks(loads) and not targets:
        raise UserError(f"the topology has no {args.disk} disk to load",
                        fix="give a disk = SIZE to a virtio-blk-pci or ich9-ahci device, "
                            "ahci_disk on q35, or use --load none")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    hops = (args.max_hops or 1000) if args.until_fail else sweep_hops(args) or args.hops
    switch = switch_plan(args, seed, tuple(t.name for t in targets))

    def body(run: VerbRun) -> Result:
        factory = run.factory
        dst_binary = find_qemu(args.dst_qemu) if args.dst_qemu else None
        plan_topology = topology
        if dst_binary is not None:  # before the factory pins the alias to its own binary
            plan_topology = replace(topology, machine=shared_machine(
                topology.machine, factory.binary, dst_binary))
        topology_copy = None
        if args.topology:
            topology_copy = run.artifacts / "topology.toml"
            shutil.copyfile(args.topology, topology_copy)
        options = PingPongOptions(hops=hops, seed=seed, load=",".join(loads),
                                  transport=args.transport, disks=targets,
                                  dst_binary=dst_binary, until_fail=args.until_fail,
                                  max_time_s=args.max_time, memory_mib=args.memory_mib,
                                  memory_rate_mib_s=args.memory_rate,
                                  keep_states=args.keep_states, inject=injects,
                                  compare_ram=args.compare_ram, switch=switch)
        progress(f"pingpong on {topology.machine} ({factory.accel.name}), seed {seed}, "
                 f"{'until the first failure' if args.until_fail else f'{hops} hops'}; "
                 f"artifacts in {run.artifacts}")
        with _Stopper() as stopper:
            pingpong = PingPong(factory.plan(plan_topology), run.artifacts, options,
                                progress=progress)
            stopper.runner = pingpong
            result = pingpong.run()
        failed_at = result.failure.hop if result.failure else len(result.records)
        replay = run.artifacts / f"replay-hop{failed_at:02d}.sh"
        write_reproduce(run.artifacts / "reproduce.sh",
                        _reproduce_argv(args, seed, topology_copy, max(failed_at, 1)),
                        Path.cwd(),
                        replay=replay if result.failure is not None and replay.exists()
                        else None)
        if result.failure is not None:
            print(f"pci-harness pingpong: FAILED at {result.failure.describe()}\n"
                  f"Artifacts (both command lines, QMP transcripts, console logs, "
                  f"reproduce.sh): {result.artifacts}", file=sys.stderr)
        report = summary(result, seed)
        if switch is not None:
            base = _reproduce_argv(args, seed, topology_copy, None)
            report["switch"] = {"plan": switch.kind,
                                "boundaries": boundaries(result, switch, base)}
        if dst_binary is not None:
            report["machine"] = pingpong.plan.topology.machine
            report["directions"] = directions(result, factory.binary.version,
                                              dst_binary.version)
        return report

    return run_verb(args, "pingpong", body, _print_table)


def _print_table(report: dict[str, Any]) -> None:
    hop_s, down = report["hop_s"], report["downtime_ms"]
    verdict = ("ok" if report["ok"] else f"FAILED ({report['failure']['kind']})"
               if "failure" in report else f"NOT VERIFIED ({report['incomplete']})")
    print(f"pingpong {verdict}: {report['hops']} hops, hop p50 {hop_s['p50']} s "
          f"p95 {hop_s['p95']} s, downtime p50 {down['p50']} ms max {down['max']} ms, "
          f"seed {report['seed']}")
    stopped = f", stopped by {report['stopped_by']}" if report["stopped_by"] else ""
    print(f"  verified {report['verified_mib']} MiB and {report['verified_files']} files "
          f"(final checks: {report['final_checks']}){stopped}; artifacts {report['artifacts']}")
    for name, count in report["verified_blocks"].items():
        print(f"  {name}: {report['writes'].get(name)} writes, {count} blocks verified")
    for name, way in report.get("directions", {}).items():
        print(f"  {name} on {report['machine']}: {way['hops']} hops"
              f"{', FAILED' if way['failed'] else ' ok'}, hop p50 {way['hop_s']['p50']} s")
    for name, info in report["loads"].items():
        if info:
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for kept in report["kept_states"]:
        print(f"  state of hop {kept['hop']} kept: {kept['stream_bytes'] / 1e6:.0f} MB stream "
              f"(written in {kept['stream_write_s']} s), {kept['disk_bytes'] / 1e6:.0f} MB "
              f"disks (copied in {kept['disk_copy_s']} s); replay-hop{kept['hop']:02d}.sh")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("pingpong", help="migrate a guest back and forth under disk load")
    p.add_argument("--machine", default="q35", help="pc, q35 or a versioned machine type")
    p.add_argument("--hops", type=int, default=10, help="hops to run (default 10)")
    p.add_argument("--disk", choices=("ahci", "virtio-blk", "both"), default="both")
    p.add_argument("--load", default="write", metavar="LOADS",
                   help="comma list (default write): write: seeded disk blocks, each read "
                        "back after the next hop; mixed: write plus a guest re-read after "
                        "every write; memory: a guest program's working set, every page "
                        "checked every sweep and after every hop; fs: ext4 on each disk, "
                        "files fsynced and checked after every hop, fsck at the end; none")
    p.add_argument("--memory-mib", type=int, default=256,
                   help="memory load: working set in MiB (two regions; default 256)")
    p.add_argument("--memory-rate", type=int, default=64, metavar="MIB_PER_S",
                   help="memory load: cap on the pages written per second, in MiB/s "
                        "(default 64; 0: flat out, which under TCG dirties memory faster "
                        "than a hop can send it: a hop that cannot converge within its "
                        "deadline is its own verdict, no-convergence)")
    p.add_argument("--keep-states", type=int, default=0, metavar="K",
                   help="keep the migration stream and disks each of the last K destinations "
                        "was given; replay-hopNN.sh (and reproduce.sh after a failure) starts "
                        "that destination from them")
    p.add_argument("--compare-ram", action=argparse.BooleanOptionalAction, default=None,
                   help="after each hop, before the destination runs, compare its RAM with "
                        "the paused source's page by page (pmemsave of both): a page that "
                        "differs is a write the migration lost, named by its guest-physical "
                        "address even if the guest would crash at once (default: with the "
                        "memory load)")
    p.add_argument("--inject", action="append", metavar="LOAD@HOP",
                   help="make the LOAD lose a write just before hop HOP (memory: a page's "
                        "writes skipped, write: a block write skipped, fs: a file corrupted "
                        "before its fsync): shows that the checks catch and name it")
    p.add_argument("--topology", metavar="FILE", help="a topology file instead of --machine/"
                   "--disk (its virtio-blk and ich9-ahci disks get the load)")
    p.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    p.add_argument("--dst-qemu", metavar="PATH",
                   help="QEMU for the destination of odd hops (cross-version migration; "
                        "a machine alias is pinned to a versioned type both QEMUs have: what "
                        "it means on the source's QEMU, else on the destination's, e.g. "
                        "q35 -> pc-q35-7.2 between 7.2 and 10.0 either way)")
    p.add_argument("--seed", type=int, help="seed of the data pattern (default: random, "
                   "printed and written to reproduce.sh)")
    p.add_argument("--until-fail", action="store_true",
                   help="hop until the first failure or a limit (--max-hops, --max-time)")
    p.add_argument("--max-hops", type=int, help="limit for --until-fail (default 1000)")
    p.add_argument("--max-time", type=_positive, metavar="SECONDS",
                   help="stop hopping after this many seconds")
    add_switch_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_pingpong)
