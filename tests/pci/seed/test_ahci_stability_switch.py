"""Migration at a chosen guest instruction (seed item "ahci-stability").

Each sweep runs the ping-pong scenario the `pingpong --switch-sweep` verb runs
(harness.scenarios.pingpong with a SwitchPlan): hop i stops the source's vCPU
at a driver function and single-steps i-1 times, then migrates; every normal
per-hop check runs (three views, every block written since the last check
read back, console scan).  The known gap below is the QEMU bug the relay works
around (harness/scenarios/migration/switchstop.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.qemu.gdbstub import GdbStub
from harness.report.switchpoints import record_switch_points
from harness.scenarios.migration.data import switch_rows
from harness.scenarios.migration.hop import migrate, start_destination
from harness.scenarios.migration.pingpong import PingPong, PingPongOptions, disk_targets
from harness.scenarios.migration.switchpoint import SwitchPlan, SwitchPoint
from harness.scenarios.migration.watch import HopFailure
from harness.topology import topology_from_dict

pytestmark = pytest.mark.seed("ahci-stability")

STEPS = 5     # boundaries per sweep: modest, each is a full hop with its checks
CD_BLOCKS = 4096   # 8 MiB of 2 KiB CD blocks, each naming itself


def _topology(disk: str):
    devices = [{"id": "vblk1", "driver": "virtio-blk-pci", "disk": "64M"}] \
        if disk == "virtio-blk" else []
    return topology_from_dict({"machine": "q35", "device": devices,
                               **({"ahci_disk": "64M"} if disk == "ahci" else {})})


def _hops(run: PingPong, request, count: int) -> list:
    """`count` hops of RUN; each hop's stop and verdict go to the nightly's "Switch
    points" table (harness/report/switchpoints.py), the failing one too."""
    records: list = []
    failure = None
    try:
        for _ in range(count):
            records.append(run.guarded(run.hop))
    except HopFailure as exc:
        failure = exc
        raise
    finally:
        record_switch_points(request, switch_rows(records, run.stops, failure,
                                                  run.switcher.plan if run.switcher else None))
    return records


def _sweep(harness_factory, artifacts, request, symbol: str, disk: str, *, ncq: bool = True,
           seed: int = 31):
    topology = _topology(disk)
    kinds = ("ahci",) if disk == "ahci" else ("virtio-blk",)
    # libata issues non-NCQ (DMA EXT) commands when told so at boot: changing
    # queue_depth later races the load, whose full ring then issues nothing.
    plan = harness_factory.plan(topology, kernel_args=() if ncq else ("libata.force=noncq",))
    run = PingPong(plan, artifacts,
                   PingPongOptions(hops=STEPS, seed=seed, load="write",
                                   disks=disk_targets(topology, kinds),
                                   switch=SwitchPlan("sweep", point=SwitchPoint(symbol))))
    guest = run.boot()
    try:
        if disk == "ahci":
            depth = int(guest.succeed("cat /sys/block/sda/device/queue_depth"))
            assert (depth > 1) == ncq, f"queue_depth {depth}, NCQ wanted: {ncq}"
        records = _hops(run, request, STEPS)
        final = run.guarded(lambda: run._check_loads(STEPS, run.current, finish=True))
    finally:
        if run.switcher is not None:
            run.switcher.release()
        for g in run.guests:
            g.shutdown()
    stops = [r.stop for r in records]
    assert all(s is not None for s in stops), stops
    # Hop i stopped i-1 single-steps after the function's entry: the first at
    # offset 0, the others where the steps led (the guest's own path).
    assert stops[0].where.startswith(f"{symbol}+0x0"), stops[0].where
    assert [s.point.steps for s in stops] == list(range(STEPS)), [s.point for s in stops]
    moved = {s.address for s in stops}
    assert len(moved) > 1, f"{STEPS} boundaries all at {stops[0].where}: the steps did not move"
    # Every write was read back once (after the hop that followed it, or at the end).
    for load in run.loads:
        assert load.last is not None and load.last.written > 0, load.name
        checked = sum(r.verified[load.name].units for r in records)
        assert checked + final[load.name].units == load.last.written, (
            load.name, checked, final[load.name], load.last.written)
    return records


def test_sweep_over_ahci_command_issue_ncq(harness_factory, artifacts, request):
    _sweep(harness_factory, artifacts, request, "ahci_qc_issue", "ahci", ncq=True)


def test_sweep_over_ahci_command_issue_non_ncq(harness_factory, artifacts, request):
    _sweep(harness_factory, artifacts, request, "ahci_qc_issue", "ahci", ncq=False)


def test_sweep_over_ahci_completion_interrupt(harness_factory, artifacts, request):
    # q35's AHCI has one MSI vector: libahci's single-level handler takes it.
    _sweep(harness_factory, artifacts, request, "ahci_single_level_irq_intr", "ahci")


def test_sweep_over_virtio_blk_kick(harness_factory, artifacts, request):
    _sweep(harness_factory, artifacts, request, "vp_notify", "virtio-blk")


def test_atapi_dma_read_in_flight_migrates(harness_factory, artifacts, request):
    """An ATAPI read on q35's AHCI CD-ROM, stopped where ahci_qc_issue returns: the
    command is issued (PORT_CMD_ISSUE written), its DMA read in flight, when the
    hop migrates; every read of the whole CD in the guest must equal the image."""
    image = artifacts / "cd.raw"
    image.write_bytes(b"".join(f"pcih cd block {i:06d} ".encode().ljust(2048, b".")
                               for i in range(CD_BLOCKS)))
    want = hashlib.md5(image.read_bytes()).hexdigest()
    plan = replace(harness_factory.plan(topology_from_dict({"machine": "q35"})),
                   ahci_cdrom=image)
    hops = 4
    run = PingPong(plan, artifacts, PingPongOptions(
        hops=hops, seed=33, load="none",
        switch=SwitchPlan("at", point=SwitchPoint("ahci_qc_issue", at_return=True))))
    guest = run.boot()
    try:
        guest.wait_until_succeeds("test -b /dev/sr0", timeout=30)
        guest.succeed("(while :; do dd if=/dev/sr0 bs=65536 iflag=direct 2>/dev/null | "
                      "md5sum >> /tmp/cd-sums; done) >/dev/null 2>&1 &")
        records = _hops(run, request, hops)
        sums = run.current.wait_until_succeeds(
            f"test $(wc -l < /tmp/cd-sums) -gt {hops} && cat /tmp/cd-sums", timeout=60)
    finally:
        if run.switcher is not None:
            run.switcher.release()
        for g in run.guests:
            g.shutdown()
    wheres = [r.stop.where for r in records if r.stop is not None]
    assert len(wheres) == hops and all(w.startswith("ata_qc_issue+") for w in wheres), wheres
    got = [line.split()[0] for line in sums.splitlines()]
    assert got and all(s == want for s in got), f"CD reads: {got}, image md5 {want}"


def test_halted_virtio_blk_write_survives_hops(harness_factory, artifacts, request):
    """io-error:write on virtio-blk: each hop's source halts on a failed write
    (werror=stop) and the destination retries it; every block reads back."""
    topology = _topology("virtio-blk")
    run = PingPong(harness_factory.plan(topology), artifacts, PingPongOptions(
        hops=3, seed=34, load="write", disks=disk_targets(topology, ("virtio-blk",)),
        switch=SwitchPlan("io-error", point=SwitchPoint("io-error:write:vblk1"))))
    result = run.run()
    record_switch_points(request, switch_rows(result.records, result.stops, result.failure,
                                              run.switcher.plan if run.switcher else None))
    assert result.failure is None, result.failure.describe()
    stops = [r.stop for r in result.records]
    assert all(s is not None and s.runstate == "io-error" and "write on vblk1.disk" in s.where
               for s in stops), stops
    assert result.verified_blocks["vblk1"] == result.writes["vblk1"] > 0, result.writes


# A strict known failure on the versions harness/qemu/known.py scopes it to.
@pytest.mark.known_gap("gdbstub-stopped-migration-aborts")
def test_vm_stopped_by_the_gdbstub_migrates_and_runs_on(make_guest, artifacts):
    """Without the relay's runstate rewrite: the destination must load the stream
    of a VM stopped by the gdbstub (runstate 'debug') and run on after `cont`."""
    topology = topology_from_dict({"machine": "q35"})
    src = make_guest(topology, name="src")
    assert src.qmp is not None
    sock = src.run_dir / "gdb.sock"
    src.qmp.hmp(f"gdbserver unix:{sock},server=on,wait=off")
    stub = GdbStub.connect(sock, Deadline(10, "gdbstub"), artifacts / "gdbstub.log")
    try:
        stub.step(Deadline(10, "one single-step"))
        status = src.qmp.execute("query-status")["status"]
        # A precondition (a plain failure if it breaks): the VM is stopped in 'debug'.
        if status != "debug":
            raise HarnessError(f"precondition: runstate {status!r} after a gdbstub step")
        dst = start_destination(src, artifacts / "dst", "dst", 1)
        try:
            # The gap is the destination's SIGABRT (qemu-died with QEMU's runstate
            # message, its signature in known.py); any other failure is plain.
            stats = migrate(src, dst, 1, resume=True, connect=False)
            assert stats.destination_status == "running", stats
        finally:
            dst.shutdown()
    finally:
        stub.close(detach=False)
