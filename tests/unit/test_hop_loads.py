"""The memory checker and the file-system load, run on this host without QEMU.

The checker is a freestanding x86-64 Linux program: it runs here as it runs in
the guest.  The fs load's loop is POSIX sh + awk: it runs here against a
directory.  So each check is fed a real lost write and must name it.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from harness.deadline import Deadline
from harness.errors import UserError
from harness.scenarios.migration.loads import parse_loads
from harness.workloads import fs as fsload
from harness.workloads.disk import DataLost, DataMismatch
from harness.workloads.fs import FILES, FsLoad, file_bytes
from harness.workloads.memory import MemoryLoad, MemoryMismatch, MemState, build_checker


class HostShell:
    """Runs the loads' commands with /bin/sh on this host, as the guest would."""

    def __init__(self, replace: dict[str, str]):
        self.replace = replace

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        for old, new in self.replace.items():
            command = command.replace(old, new)
        command = command.replace("echo 3 > /proc/sys/vm/drop_caches", "true")
        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        status, out = self.execute(command, timeout)
        assert status == 0, (command, out)
        return out


def _wait_state(path: Path, ok, seconds: float = 30) -> MemState:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            state = MemState.parse(path.read_text())
            if ok(state):
                return state
        time.sleep(0.02)
    raise AssertionError(f"checker state never matched: {path.read_text()}")


def test_memory_checker_catches_a_skipped_page_and_names_it(tmp_path):
    binary = build_checker()
    pages = 256
    proc = subprocess.Popen([str(binary), str(tmp_path), str(pages), "0"])
    try:
        state = _wait_state(tmp_path / "state", lambda s: s.done >= 3)
        assert state.bad == 0 and state.checked >= 3 * 2 * pages, state
        (tmp_path / "inject").write_text("77\n")
        state = _wait_state(tmp_path / "state", lambda s: s.bad > 0)
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=30)
    fields = state.first_bad_fields()
    sweep = int(fields["sweep"])
    injected_page, injected_sweep = state.injected.split("@")
    assert injected_page == "77" and sweep == int(injected_sweep) + 1, state
    # The page lost generation sweep-1 in both copies: it still holds sweep-2.
    assert (fields["page"], fields["region"]) == ("77", "AB"), fields
    assert int(fields["expected_gen"]) == sweep - 1, fields
    assert int(fields["found_gen_A"]) == int(fields["found_gen_B"]) == sweep - 2, fields
    assert int(fields["va"], 16) % 4096 == 0 and int(fields["va"], 16) > 0, fields
    assert "pa" in fields, fields  # 0x0 when not root (pagemap hides PFNs)
    assert state.bad == 1, state   # one bad page visit (both copies stale)
    load = MemoryLoad(2, 0)
    with pytest.raises(MemoryMismatch) as info:
        load.check(state, 4)
    message = info.value.message
    assert f"page 77 of region AB (virtual {fields['va']}" in message, message
    assert f"expected generation {sweep - 1}, found A={sweep - 2} B={sweep - 2}" in message
    assert "after hop 4" in message


def test_memory_checker_state_is_clean_without_a_fault(tmp_path):
    binary = build_checker()
    proc = subprocess.Popen([str(binary), str(tmp_path), "64", "2000"])
    try:
        state = _wait_state(tmp_path / "state", lambda s: s.done >= 2)
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=30)
    MemoryLoad(2, 0).check(state, 1)  # no raise
    assert state.first_bad == "-" and state.pages == 64


class StateShell:
    """Answers `cat .../state` with the next of some checker state lines."""

    def __init__(self, *lines: str):
        self.lines = list(lines)

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        return 0, self.lines.pop(0) if len(self.lines) > 1 else self.lines[0]


def test_memory_check_counts_what_the_sweep_read_back(tmp_path):
    """after_hop's bytes are the page checks of a sweep that began after the hop,
    as the checker counted them (2 x 64 pages here): not the working set's size
    restated, so a checker whose sweep skipped pages shows a smaller count."""
    binary = build_checker()
    load = MemoryLoad(2, 0)
    load.pages = 64
    shell = HostShell({"/tmp/pcih-mem": str(tmp_path)})
    proc = subprocess.Popen([str(binary), str(tmp_path), "64", "2000"])
    try:
        _wait_state(tmp_path / "state", lambda s: s.done >= 1)
        verified = load.after_hop(shell, 1, Deadline(20, "sweep", scaled=False))
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=30)
    assert verified.bytes == 2 * 64 * 4096, verified
    # A sweep that read back 100 page copies of 128 says so.
    short = StateShell("sweep=9 done=8 checked=900 swept=128 bad=0 pages=64 first_bad=-",
                       "sweep=11 done=10 checked=1000 swept=100 bad=0 pages=64 first_bad=-")
    verified = load.after_hop(short, 2, Deadline(5, "sweep", scaled=False))
    assert verified.bytes == 100 * 4096, verified


def _fs_load(tmp_path: Path) -> tuple[FsLoad, HostShell, subprocess.Popen[bytes]]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    state = tmp_path / "state"
    load = FsLoad("ahci", "/dev/sdX", 42)
    shell = HostShell({fsload.STATE_DIR: str(state), load.mount: str(mount)})
    (state / "ahci").mkdir(parents=True)
    script = fsload.loop_script("ahci", 42, str(mount)).replace(fsload.STATE_DIR, str(state))
    (state / "ahci" / "run.sh").write_text(script)
    (state / "ahci" / "state").write_text("written=0 ioerr=0 held=0\n")
    proc = subprocess.Popen(["sh", str(state / "ahci" / "run.sh")])
    load.wait_started(shell, Deadline(20, "fs start", scaled=False))
    return load, shell, proc


def test_fs_loop_writes_what_the_host_expects(tmp_path):
    load, shell, proc = _fs_load(tmp_path)
    try:
        total = 0
        for hop in (1, 2, 3):
            time.sleep(0.3)
            verified = load.after_hop(shell, hop, Deadline(20, "check", scaled=False))
            total += verified.files
            assert verified.files == min(load.last.written, FILES) > 0  # type: ignore[union-attr]
    finally:
        (tmp_path / "state" / "ahci" / "stop").touch()
        proc.wait(timeout=30)
    # Independently of the load's own check: the files are the host's bytes, as
    # of the loop's last write (it may write more between hop 3's check and stop).
    final = load.state(shell)
    assert final.written >= load.last.written  # type: ignore[union-attr]
    for k, gen in load.expected(final.written).items():
        data = (tmp_path / "mnt" / f"f{k}").read_bytes()
        assert hashlib.md5(data).digest() == hashlib.md5(file_bytes("ahci", 42, k, gen)).digest()


def test_fs_load_names_the_file_and_offset_of_a_corrupted_write(tmp_path):
    load, shell, proc = _fs_load(tmp_path)
    try:
        load.after_hop(shell, 1, Deadline(20, "check", scaled=False))
        what = load.inject(shell)
        with pytest.raises(DataMismatch) as info:
            # Checked at once: on an idle host the loop rewrites all 32 files
            # within a second, and a rewritten file no longer holds the loss.
            for hop in range(2, 10):
                load.after_hop(shell, hop, Deadline(20, "check", scaled=False))
                time.sleep(0.2)
    finally:
        (tmp_path / "state" / "ahci" / "stop").touch()
        proc.wait(timeout=30)
    k = what.split(" file f")[1].split()[0]
    message = info.value.message
    assert f"file {load.mount}/f{k} " in message, message
    assert "differs from offset 6408" in message and "LOST" in message, message
    assert info.value.block == 6408


def test_a_missing_file_is_lost_data_named_by_its_path(tmp_path):
    """md5sum exits 1 for a file that is gone: data-lost naming the file, never a
    failed guest command (which the ping-pong called ssh-dead)."""
    load, shell, proc = _fs_load(tmp_path)
    try:
        load.after_hop(shell, 1, Deadline(20, "check", scaled=False))
    finally:
        (tmp_path / "state" / "ahci" / "stop").touch()
        proc.wait(timeout=30)
    state = load.state(shell)
    victim = max(load.expected(state.written))
    (tmp_path / "mnt" / f"f{victim}").unlink()
    with pytest.raises(DataLost) as info:
        load._verify(shell, state, 2)
    message = info.value.message
    assert f"file {load.mount}/f{victim} " in message and "is missing" in message, message
    assert "No such file" in message, message


def test_load_lists_parse_and_refuse_bad_input():
    assert parse_loads("memory,fs,write") == ("memory", "fs", "write")
    assert parse_loads(" fs , memory ") == ("fs", "memory")
    for bad in ("disk", "none,write", "write,mixed", ""):
        with pytest.raises(UserError):
            parse_loads(bad)


def test_a_hop_still_sending_at_its_deadline_is_no_convergence():
    """Red for the non-convergence verdict: QEMU says 'active' until the deadline."""
    from unittest import mock

    from harness.scenarios.migration import hop as migration

    def guest(name):
        g = mock.Mock()
        g.name = name
        g.process.alive.return_value = True
        g.qmp.execute.return_value = {"status": "active", "ram": {
            "transferred": 5_000_000_000, "remaining": 300_000_000,
            "dirty-pages-rate": 120000, "dirty-sync-count": 41}}
        return g

    with pytest.raises(migration.HopFailure) as info:
        migration._wait_completed(guest("g00"), guest("g01"), 3,
                                  Deadline(0.2, "hop 3 migration", scaled=False))
    failure = info.value
    assert failure.kind == "no-convergence" and failure.hop == 3, failure.describe()
    assert "5000 MB" in failure.detail and "120000 pages/s" in failure.detail, failure.detail
    assert "300 MB remain" in failure.detail and "--memory-rate" in failure.detail


def _checker_page(tag: int, index: int, gen: int) -> bytes:
    import struct

    page = bytearray(4096)
    struct.pack_into("<QQQ", page, 0, tag, index, gen)
    struct.pack_into("<Q", page, 4088, gen ^ tag ^ index)
    return bytes(page)


def test_host_ram_scan_names_a_page_that_missed_writes():
    """Red for the host-side scan: a dump where A/B[0..k) hold 9, the rest 8, and
    page 5 of both regions still holds 6 (lost writes), among unrelated pages."""
    from harness.scenarios.migration.memscan import TAG_A, TAG_B, scan

    pages = {}
    for i in range(8):
        gen = 9 if i < 3 else 8
        if i == 5:
            gen = 6
        pages[("A", i)] = _checker_page(TAG_A, i, gen)
        pages[("B", i)] = _checker_page(TAG_B, i, gen)
    # scattered in physical memory, in no particular order, with other pages between
    layout = [b"\1" * 4096, pages[("B", 5)], pages[("A", 0)], b"\0" * 4096]
    layout += [pages[k] for k in sorted(pages) if k not in (("B", 5), ("A", 0))]
    result = scan(b"".join(layout))
    assert result.pages == 16 and result.newest_gen == 9 and result.missing == 0
    assert [(p.region, p.index, p.expected_gen, p.found_gen) for p in result.stale] == [
        ("A", 5, 8, 6), ("B", 5, 8, 6)], result.stale
    b5 = next(p for p in result.stale if p.region == "B")
    assert b5.physical == 4096, b5  # the dump offset is the guest-physical address
    assert "2 of 16 checker pages stale" in result.describe(), result.describe()
    # A consistent dump (the boundary page half written) is clean.
    clean = [_checker_page(TAG_A, i, 9 if i < 3 else 8) for i in range(8)]
    clean += [_checker_page(TAG_B, i, 9 if i < 3 else 8) for i in range(8)]
    assert scan(b"".join(clean)).stale == ()
