"""Each failure kind of a migration hop, caused on a real guest and seen by name
(issue 23).  Elsewhere: qemu-died and ssh-dead (seed/test_ahci_stability.py),
destination-load-failed by QEMU's own AHCI gap (seed/test_ahci_stability_cases.py,
7.2.22), lost-dirty-pages (test_ramdiff_red.py), data-mismatch (--inject,
test_pingpong_verdicts.py).  A guest silent on SSH while its QEMU lives is asked
why (watch.stuck_verdict): here the VM paused (vm-stopped), the whole QEMU
stopped (qemu-hang) and the guest's userspace frozen (guest-hang).
"""

from __future__ import annotations

import os
import signal

import pytest

from harness.deadline import Deadline
from harness.scenarios import threeview
from harness.scenarios.migration import hop as hopmod
from harness.scenarios.migration import pingpong as pingpongmod
from harness.scenarios.migration.hop import HopFailure, migrate, start_destination
from harness.scenarios.migration.pingpong import PingPong, PingPongOptions, disk_targets
from harness.topology import topology_from_dict

pytestmark = pytest.mark.smoke


def _q35(**extra):
    return topology_from_dict({"machine": "q35", **extra})


def test_a_migration_that_cannot_connect_is_migration_failed(make_guest, artifacts):
    src = make_guest(_q35(), name="src")
    dst = start_destination(src, artifacts / "dst", "dst", 1)
    try:
        with pytest.raises(HopFailure) as info:
            migrate(src, dst, 1, wrap_uri=lambda uri: f"unix:{artifacts / 'nobody-listens'}")
        failure = info.value
        assert failure.kind == "migration-failed", failure.describe()
        assert "the source says failed" in failure.detail and "nobody-listens" in \
            failure.detail, failure.detail
    finally:
        dst.shutdown()


def test_a_destination_without_the_sources_device_is_destination_load_failed(make_guest,
                                                                              artifacts):
    src = make_guest(_q35(device=[{"id": "rp1", "driver": "pcie-root-port", "addr": "2.0"}]),
                     name="src")
    # Hot-plugged on the source only: the destination has no such device to load.
    src.qmp_execute("device_add", {"driver": "virtio-rng-pci", "id": "extra", "bus": "rp1"})
    dst = start_destination(src, artifacts / "dst", "dst", 1)
    try:
        with pytest.raises(HopFailure) as info:
            migrate(src, dst, 1)
        failure = info.value
        assert failure.kind == "destination-load-failed", failure.describe()
        assert "destination dst exited with status 1" in failure.detail, failure.detail
    finally:
        dst.shutdown()


def test_a_migration_still_sending_at_its_deadline_is_no_convergence(make_guest, artifacts,
                                                                     monkeypatch):
    monkeypatch.setattr(hopmod, "MAX_BANDWIDTH", 1 << 20)   # 1 MiB/s: ~90 s for the RAM
    monkeypatch.setattr(hopmod, "MIGRATE_SECONDS", 1.0)
    src = make_guest(_q35(), name="src")
    dst = start_destination(src, artifacts / "dst", "dst", 1)
    try:
        with pytest.raises(HopFailure) as info:
            migrate(src, dst, 1)
        failure = info.value
        assert failure.kind == "no-convergence", failure.describe()
        assert "still sending after" in failure.detail, failure.detail
    finally:
        dst.shutdown()


def test_a_load_that_stops_writing_is_load_stalled(harness_factory, artifacts, monkeypatch):
    monkeypatch.setattr(pingpongmod, "PROGRESS_SECONDS", 2.0)
    topology = _q35(ahci_disk="64M")
    run = PingPong(harness_factory.plan(topology), artifacts, PingPongOptions(
        hops=2, seed=61, load="write", disks=disk_targets(topology, ("ahci",))))
    guest = run.boot()
    try:
        load = run.loads[0]
        guest.succeed(f"touch {load.dir}/stop")   # the loop ends after its current write
        guest.wait_until_succeeds(f"test -e {load.dir}/stopped", timeout=30)
        run.guarded(run.hop)   # hop 1's check reads back (and acknowledges) the last writes
        with pytest.raises(HopFailure) as info:
            run.guarded(run.hop)
        failure = info.value
        assert (failure.kind, failure.hop) == ("load-stalled", 2), failure.describe()
        assert f"the load on {load.name}" in failure.detail, failure.detail
    finally:
        for g in run.guests:
            g.shutdown()


def test_a_file_gone_from_the_fs_load_is_data_lost(harness_factory, artifacts):
    topology = _q35(ahci_disk="64M")
    run = PingPong(harness_factory.plan(topology), artifacts, PingPongOptions(
        hops=1, seed=62, load="fs", disks=disk_targets(topology, ("ahci",))))
    run.boot()
    try:
        load = run.loads[0]
        verify = load._verify
        removed: list[str] = []

        def remove_then_verify(shell, state, hop):
            # The writer is held now (after_hop): nothing rewrites the file first.
            k = max(load.expected(state.written))
            removed.append(f"{load.mount}/f{k}")
            shell.succeed(f"rm {removed[0]}")
            return verify(shell, state, hop)

        load._verify = remove_then_verify
        with pytest.raises(HopFailure) as info:
            run.guarded(run.hop)
        failure = info.value
        assert (failure.kind, failure.hop) == ("data-lost", 1), failure.describe()
        assert f"file {removed[0]} " in failure.detail and "is missing" in failure.detail, \
            failure.detail
    finally:
        for g in run.guests:
            g.shutdown()


def _checks_after(harness_factory, artifacts, monkeypatch, seed, before_checks):
    """One hop; BEFORE_CHECKS(destination) runs right before the checks after it;
    the HopFailure they end in.  The guest dump's SSH deadline is cut to 8 s: the
    verdict, not the wait, is under test."""
    monkeypatch.setattr(threeview, "GUEST_DUMP_SECONDS", 8.0)
    run = PingPong(harness_factory.plan(_q35()), artifacts,
                   PingPongOptions(hops=1, seed=seed, load="none"))
    run.boot()
    check = run.check

    def meddle_then_check(number, src):
        assert run.current is not None
        before_checks(run.current)
        return check(number, src)

    run.check = meddle_then_check
    try:
        with pytest.raises(HopFailure) as info:
            run.guarded(run.hop)
        return info.value
    finally:
        for g in run.guests:
            if g.process is not None and g.process.alive():
                os.kill(g.process.pid, signal.SIGCONT)  # a stopped QEMU cannot quit
            g.shutdown()


def test_a_destination_paused_before_the_checks_is_vm_stopped(harness_factory, artifacts,
                                                              monkeypatch):
    failure = _checks_after(harness_factory, artifacts, monkeypatch, 64,
                            lambda dst: dst.qmp_execute("stop"))
    assert (failure.kind, failure.hop) == ("vm-stopped", 1), failure.describe()
    assert "QEMU reports the VM 'paused'" in failure.detail, failure.detail


def test_a_destination_qemu_that_stops_answering_is_qemu_hang(harness_factory, artifacts,
                                                              monkeypatch):
    def freeze(dst):
        assert dst.process is not None
        os.kill(dst.process.pid, signal.SIGSTOP)   # QEMU itself: monitor, vCPU, slirp

    failure = _checks_after(harness_factory, artifacts, monkeypatch, 65, freeze)
    assert (failure.kind, failure.hop) == ("qemu-hang", 1), failure.describe()
    assert "QEMU's monitor does not answer query-status" in failure.detail, failure.detail


def test_a_guest_silent_on_ssh_and_its_console_is_guest_hang(harness_factory, artifacts,
                                                             monkeypatch):
    def freeze_userspace(dst):
        assert dst.console is not None
        # sshd stopped, and the console's shell replaced by a sleep: the VM runs,
        # nothing in the guest answers.
        dst.console.send_line("kill -STOP $(pidof dropbear); exec sleep 600")

    failure = _checks_after(harness_factory, artifacts, monkeypatch, 66, freeze_userspace)
    assert (failure.kind, failure.hop) == ("guest-hang", 1), failure.describe()
    assert "the VM runs, but the guest does not answer on its serial console" in \
        failure.detail, failure.detail


def test_a_kernel_crash_right_after_resume_is_guest_trouble(harness_factory, artifacts,
                                                           monkeypatch):
    """The guest-oops case: the kernel crashes (sysrq c: "Kernel panic - not
    syncing: sysrq triggered crash" on Linux 6.1) on the destination just before
    the checks after the hop; the verdict names the console line."""
    def oops(dst):
        assert dst.console is not None
        dst.console.send_line("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger")
        dst.console.expect("sysrq triggered crash", Deadline(30, "the crash on the console"))

    failure = _checks_after(harness_factory, artifacts, monkeypatch, 63, oops)
    assert (failure.kind, failure.hop) == ("guest-trouble", 1), failure.describe()
    assert failure.detail.startswith("the console of g01 shows: ") and \
        "Kernel panic - not syncing: sysrq triggered crash" in failure.detail, failure.detail
