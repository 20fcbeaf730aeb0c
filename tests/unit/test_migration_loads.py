"""The disk load's pattern, plan and guest loop, checked without QEMU.

The guest loop is plain POSIX sh over coreutils-compatible tools, so it runs
here against a file: the host-side expectations (block_md5, LoadPlan.expected)
are checked against what the shell really wrote.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from harness.deadline import Deadline
from harness.workloads.blocks import BLOCK_SIZE, block_bytes, block_md5, parse_block_devices
from harness.workloads.disk import (
    DataMismatch,
    DiskLoad,
    LoadPlan,
    LoadState,
    _gen_cmd,
    parse_states,
)


class HostShell:
    """Runs the load's commands with /bin/sh on this host, as the guest would."""

    def __init__(self, root: Path):
        self.root = root

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        command = command.replace("/tmp/pcih-load", str(self.root))
        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        status, out = self.execute(command, timeout)
        assert status == 0, (command, out)
        return out


def test_shell_pattern_equals_host_pattern():
    plan = LoadPlan("vblk1", 987654321, 128, 5, 3)
    out = subprocess.run(["sh", "-c", f"b=7; g=12; {_gen_cmd(plan, '$b', '$g')} | md5sum"],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    assert out == block_md5("vblk1", 987654321, 7, 12)
    assert out != block_md5("vblk1", 987654321, 7, 11)  # the generation is in the data
    assert len(block_bytes("vblk1", 1, 0, 0)) == BLOCK_SIZE


def test_plan_visits_every_block_once_per_generation():
    for seed in range(20):
        plan = LoadPlan.from_seed("ahci", seed, 64 * 2**20)
        assert plan.blocks == 128
        first = [plan.block_of(i) for i in range(plan.blocks)]
        assert sorted(first) == list(range(plan.blocks)), (seed, plan)
    # expected(): brute force over the write sequence
    plan = LoadPlan.from_seed("ahci", 3, 10 * BLOCK_SIZE)
    for written in (0, 1, 9, 10, 11, 37):
        brute: dict[int, int] = {}
        for i in range(written):
            brute[plan.block_of(i)] = i // plan.blocks
        assert plan.expected(written) == brute, written


def test_block_devices_are_found_by_pci_path():
    text = ("sda /sys/devices/pci0000:00/0000:00:04.0/0000:01:01.0/ata1/host0/target0:0:0/0:0:0:0\n"
            "vda /sys/devices/pci0000:00/0000:00:03.0/virtio1\n")
    assert parse_block_devices(text) == {"sda": ("04.0", "01.0"), "vda": ("03.0",)}


@pytest.mark.parametrize("mode", ["write", "mixed"])
def test_guest_loop_runs_and_verifies_on_a_file(tmp_path, mode):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (12 * BLOCK_SIZE))
    shell = HostShell(tmp_path / "state")
    # 8 blocks above a 4-block "file system": the ring starts at block 4
    plan = LoadPlan.from_seed("d1", 77, 12 * BLOCK_SIZE, base_bytes=4 * BLOCK_SIZE)
    assert (plan.blocks, plan.base) == (8, 4)
    load = DiskLoad(plan, str(disk), mode)
    load.start(shell)
    load.wait_started(shell, Deadline(20, "first write", scaled=False))
    # Unacknowledged, the loop stops one ring ahead: no block is overwritten unread.
    deadline = time.monotonic() + 30
    while (state := load.state(shell)).waits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.waits > 0 and state.written == plan.blocks, state
    checked = 0
    hop = 0
    while checked < 20:  # several generations: only possible if the checks acknowledge
        hop += 1
        checked += load.after_hop(shell, hop, Deadline(20, "check", scaled=False)).units
    verified = load.finish(shell, hop, Deadline(20, "stop", scaled=False))
    state = load.last
    assert state is not None and state.ioerr == 0, state
    # Every write was read back exactly once, by a check after a hop or at the end.
    assert checked + verified.units == state.written >= 20, (checked, verified, state)
    if mode == "mixed":
        assert state.verified == state.written and state.bad == 0, state
    # Independently: the file holds exactly what the host expects, block by block;
    # the blocks below the ring were never touched.
    data = disk.read_bytes()
    assert data[:4 * BLOCK_SIZE] == b"\0" * (4 * BLOCK_SIZE)
    for block, gen in load.plan.expected(state.written).items():
        chunk = data[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]
        assert hashlib.md5(chunk).hexdigest() == block_md5("d1", 77, block, gen), block
    # A corrupted block is found and named.
    victim = load.plan.block_of(state.written - 1)
    with open(disk, "r+b") as f:
        f.seek(victim * BLOCK_SIZE + 100)
        f.write(b"X")
    with pytest.raises(DataMismatch) as info:
        load.verify_all(shell, state.written)
    assert info.value.block == victim and f"block {victim}, write #{state.written - 1}" \
        in info.value.message, info.value.message


def test_a_lost_write_in_an_early_hop_is_caught_and_named(tmp_path):
    """Issue 17 point 5 red: a write skipped by the loop (as if the hop lost it) is
    caught by the next check in write mode, naming the block, write and hop."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (16 * BLOCK_SIZE))
    shell = HostShell(tmp_path / "state")
    load = DiskLoad(LoadPlan.from_seed("vblk1", 5, 16 * BLOCK_SIZE), str(disk), "write")
    load.start(shell)
    load.wait_started(shell, Deadline(20, "first write", scaled=False))
    load.after_hop(shell, 1, Deadline(20, "check", scaled=False))
    checked_upto = {1: load.acked}       # hop -> writes covered by the check after it
    what = load.inject(shell)            # before hop 2: a write a few writes ahead is lost
    index = int(what.split("#")[1].split()[0])
    try:
        with pytest.raises(DataMismatch) as info:
            for hop in range(2, 8):
                load.after_hop(shell, hop, Deadline(20, "check", scaled=False))
                checked_upto[hop] = load.acked
    finally:
        shell.succeed(f"touch {tmp_path}/state/vblk1/stop")
    block = load.plan.block_of(index)
    made_after = max(h for h, upto in checked_upto.items() if upto <= index)
    message = info.value.message
    assert info.value.block == block, message
    assert f"block {block}, write #{index} (generation {index // 16}, made after hop " \
        f"{made_after})" in message, message


def test_bad_reread_in_state_raises_with_expected_md5():
    load = DiskLoad(LoadPlan("ahci", 5, 16, 3, 0), "/dev/sda", "mixed")
    load.check(LoadState(10, 9, 0, "", 0))
    with pytest.raises(DataMismatch) as info:
        load.check(LoadState(10, 8, 1, "4:0:deadbeef", 0))
    assert info.value.block == 4
    assert block_md5("ahci", 5, 4, 0) in info.value.message and "deadbeef" in info.value.message


def test_state_lines_parse():
    text = "noise\n@@load ahci written=5 verified=0 bad=0 first_bad= ioerr=1\n"
    assert parse_states(text) == {"ahci": LoadState(5, 0, 0, "", 1)}


def _full_ring(tmp_path):
    """A write load on an 8-block file whose loop has filled its ring and waits."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (8 * BLOCK_SIZE))
    shell = HostShell(tmp_path / "state")
    plan = LoadPlan.from_seed("d1", 5, 8 * BLOCK_SIZE)
    load = DiskLoad(plan, str(disk), "write")
    load.start(shell)
    deadline = time.monotonic() + 30
    while (state := load.state(shell)).waits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.written == plan.blocks and state.waits > 0, state
    return load, shell


def test_a_ring_filled_before_the_first_look_is_checked_not_stalled(tmp_path):
    """The loop can fill its whole ring before wait_started looks (a fast disk): the
    first check must read those writes back and acknowledge them, not wait for a
    progress the loop cannot make until it is acknowledged (it stalled at 8 writes)."""
    load, shell = _full_ring(tmp_path)
    plan = load.plan
    assert load.wait_started(shell, Deadline(5, "first write", scaled=False)).written == plan.blocks
    checked = load.after_hop(shell, 1, Deadline(5, "check", scaled=False))
    assert checked.units == plan.blocks, checked
    load.finish(shell, 1, Deadline(20, "stop", scaled=False))


def test_an_injection_into_a_full_ring_is_made_and_caught_after_the_hop(tmp_path):
    """A loop that filled its ring before the first hop waits for an acknowledgement;
    --inject then waited 30 s for a skip that could not come (LoadStalled in CI on
    --inject write@1).  The writes so far are checked and acknowledged, the skip
    happens, and the check after hop 1 names the skipped write as made before it."""
    load, shell = _full_ring(tmp_path)
    plan = load.plan
    try:
        what = load.inject(shell)
        index = int(what.split("#")[1].split()[0])
        assert index >= plan.blocks, (index, plan.blocks)   # after the full ring
        with pytest.raises(DataMismatch) as info:
            load.after_hop(shell, 1, Deadline(20, "check", scaled=False))
    finally:
        shell.succeed(f"touch {tmp_path}/state/d1/stop")
    block = plan.block_of(index)
    assert f"block {block}, write #{index} (generation {index // plan.blocks}, made after " \
        f"hop 0)" in info.value.message, (index, info.value.message)


def test_make_room_releases_a_full_ring_and_every_write_is_still_counted_once(tmp_path):
    """Before a switch-point stop a full ring is checked and acknowledged, so the
    loop issues I/O again (a sweep never reached ahci_qc_issue under load); the
    next check counts those writes too: checks + final = writes."""
    load, shell = _full_ring(tmp_path)
    plan = load.plan
    assert load.make_room(shell) is True
    assert load.acked == plan.blocks, load.acked
    deadline = time.monotonic() + 30
    while load.state(shell).written <= plan.blocks and time.monotonic() < deadline:
        time.sleep(0.05)                      # the loop writes again
    checked = load.after_hop(shell, 1, Deadline(20, "check", scaled=False))
    final = load.finish(shell, 1, Deadline(20, "stop", scaled=False))
    assert load.last is not None
    assert checked.units + final.units == load.last.written > plan.blocks, \
        (checked.units, final.units, load.last.written)
    assert checked.bytes == checked.units * plan.block_size


def test_make_room_leaves_a_ring_with_room_alone(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (8 * BLOCK_SIZE))
    shell = HostShell(tmp_path / "state")
    load = DiskLoad(LoadPlan.from_seed("d1", 5, 8 * BLOCK_SIZE), str(disk), "write")
    shell.succeed(f"mkdir -p {tmp_path}/state/d1 && echo 'written=3 verified=0 bad=0 "
                  f"first_bad= ioerr=0' > {tmp_path}/state/d1/state")
    assert load.make_room(shell) is False     # 3 of 8: room left, nothing checked
    assert load.acked == 0
