"""pingpong verb pieces: topologies, percentiles, the JSON summary, reproduce.sh."""

from __future__ import annotations

import json
from pathlib import Path

from harness.cli import build_parser
from harness.cli.pingpong import build_topology, directions, summary
from harness.scenarios.migration.hop import HopFailure, HopStats
from harness.scenarios.migration.pingpong import (
    HopRecord,
    PingPongResult,
    disk_targets,
    write_reproduce,
)
from harness.stats import percentile
from harness.workloads.disk import Verified


def test_topologies_put_the_disks_where_the_issue_says():
    q35 = build_topology("q35", "both")
    assert q35.ahci_disk is not None
    assert [(t.name, t.device_id) for t in disk_targets(q35, ("ahci", "virtio-blk"))] == [
        ("ahci", None), ("vblk1", "vblk1")]
    pc = build_topology("pc", "ahci")
    sata = pc.device("sata1")
    assert (sata.driver, sata.bus) == ("ich9-ahci", "br1")
    assert pc.device("br1").driver == "pci-bridge"
    assert [t.name for t in disk_targets(pc, ("virtio-blk",))] == []


def test_percentile_nearest_rank():
    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert percentile(values, 50) == 0.3
    assert percentile(values, 95) == 0.5
    assert percentile([], 50) is None


def _stats(hop: int, total: float, down: float) -> HopStats:
    return HopStats(hop, f"g{hop - 1:02d}", f"g{hop:02d}", 0.1, 0.2, 0.0, 0.1, total, down,
                    200.0, 1.0, 88_000_000, "running")


def test_summary_json_shape_on_failure(tmp_path):
    records = [HopRecord(_stats(i, 0.3 + i / 10, 10.0 * i), 0.4,
                         {"ahci": Verified(bytes=i * 2**20, units=16 * i, seconds=0.1),
                          "fs-ahci": Verified(bytes=2**19, files=i, units=i, seconds=0.2)})
               for i in (1, 2, 3)]
    failure = HopFailure("qemu-died", 4, "source g03: killed by SIGKILL")
    result = PingPongResult(ok=False, records=records, failure=failure, artifacts=tmp_path)
    out = json.loads(json.dumps(summary(result, 99)))
    assert out["ok"] is False and out["hops"] == 3 and out["seed"] == 99
    # MiB and files are summed over the hops' checks (1+2+3 MiB + 3 x 0.5 MiB; 1+2+3 files)
    assert out["verified_mib"] == 7.5 and out["verified_files"] == 6
    assert [h["verified_mib"] for h in out["per_hop"]] == [1.5, 2.5, 3.5]
    assert [h["verified_files"] for h in out["per_hop"]] == [1, 2, 3]
    assert [h["verify_s"] for h in out["per_hop"]] == [0.3, 0.3, 0.3]
    assert out["final_checks"] == "not run" and out["stopped_by"] is None
    assert isinstance(out["failures"], list) and len(out["failures"]) == 1
    assert out["hop_s"] == {"p50": 0.5, "p95": 0.6}
    assert out["downtime_ms"] == {"p50": 20.0, "max": 30.0}
    assert out["failure"] == {"hop": 4, "kind": "qemu-died",
                              "detail": "source g03: killed by SIGKILL", "artifacts": str(tmp_path)}


def test_cross_version_hops_are_counted_per_direction(tmp_path):
    records = [HopRecord(_stats(i, float(i), 1.0), 0.1, {}) for i in (1, 2, 3, 4, 5)]
    failure = HopFailure("device-state", 6, "destination exited: Bad config data")
    result = PingPongResult(ok=False, records=records, failure=failure, artifacts=tmp_path)
    ways = directions(result, "10.0.2", "7.2.22")
    assert list(ways) == ["10.0.2 -> 7.2.22", "7.2.22 -> 10.0.2"]
    assert ways["10.0.2 -> 7.2.22"] == {"hops": 3, "failed": False,
                                        "hop_s": {"p50": 3.0, "p95": 5.0}}
    # hop 6 is even: it was on its way back, from the destination QEMU to the source's
    assert ways["7.2.22 -> 10.0.2"] == {"hops": 2, "failed": True,
                                        "hop_s": {"p50": 3.0, "p95": 4.0}}
    clean = directions(PingPongResult(True, records[:1], None, tmp_path), "a", "b")
    assert clean["a -> b"]["hops"] == 1 and clean["b -> a"] == {
        "hops": 0, "failed": False, "hop_s": {"p50": None, "p95": None}}


def test_verb_options_parse_and_reproduce_script(tmp_path: Path):
    args = build_parser().parse_args(["pingpong", "--machine", "pc", "--hops", "20", "--disk",
                                      "ahci", "--load", "mixed", "--transport", "tcp", "--seed",
                                      "5", "--until-fail", "--max-time", "60", "--json"])
    assert (args.machine, args.hops, args.disk, args.load, args.transport, args.seed,
            args.until_fail, args.max_time, args.json) == ("pc", 20, "ahci", "mixed", "tcp", 5,
                                                           True, 60.0, True)
    script = tmp_path / "reproduce.sh"
    write_reproduce(script, ["python", "-m", "harness", "pingpong", "--seed", "5"], tmp_path)
    text = script.read_text()
    assert text.startswith("#!/bin/sh") and "--seed 5" in text and script.stat().st_mode & 0o100
