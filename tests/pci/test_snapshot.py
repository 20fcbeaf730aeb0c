"""Restored guests are indistinguishable from cold-booted ones (issue 9)."""

import time

import pytest

from harness.scenarios.threeview import changes, collect_views
from harness.snapshot import SnapshotCache
from harness.topology import topology_from_dict

BRIDGED = {
    "machine": "q35",
    "device": [
        {"id": "rp1", "driver": "pcie-root-port", "chassis": 1},
        {"id": "disk1", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "32M"},
    ],
}


@pytest.fixture
def messages():
    return []


@pytest.fixture
def cache(tmp_path, messages):
    """A private snapshot cache, so this test controls build/restore/corruption."""
    return SnapshotCache(messages.append, root=tmp_path / "snapshots")


def _launch(cache, harness_factory, topology, artifacts, name, started):
    guest = cache.launch(harness_factory.plan(topology), artifacts / name, name)
    started.append(guest)
    return guest


@pytest.fixture
def started():
    guests = []
    yield guests
    for guest in guests:
        guest.shutdown()


@pytest.mark.smoke
def test_restored_guest_equals_cold_guest(cache, harness_factory, artifacts, started):
    topology = topology_from_dict(BRIDGED)
    cold = harness_factory.plan(topology)
    from harness.guest.running import Guest

    reference = Guest(cold, artifacts / "cold", name="cold").launch()
    started.append(reference)
    first = _launch(cache, harness_factory, topology, artifacts, "first", started)
    second = _launch(cache, harness_factory, topology, artifacts, "second", started)
    assert not reference.timings.restored
    assert first.timings.restored and second.timings.restored, (first.timings, second.timings)

    # Same machine: the three views of a restored guest equal a cold one's.
    views_cold, views_restored = collect_views(reference), collect_views(second)
    assert views_restored.differences() == [], views_restored.differences()
    diff = changes(views_cold, views_restored)
    assert not diff, f"cold vs restored views differ: {diff.all()}"

    for guest in (first, second):
        # Clock corrected: the guest's wall clock is the host's, not the save time.
        guest_now = int(guest.succeed("date +%s"))
        assert abs(guest_now - time.time()) < 5, (guest_now, time.time())
        # The run's own MAC is on the management NIC.
        macs = guest.succeed("cat /sys/class/net/*/address").split()
        assert guest.mgmt_mac in macs, (guest.mgmt_mac, macs)
        # Fresh per-test disk: blank, and writable.
        assert guest.succeed("head -c 512 /dev/vda | tr -d '\\0' | wc -c").strip() == "0"
    assert first.mgmt_mac != second.mgmt_mac and first.ssh_port != second.ssh_port
    # Different randomness after restore (the fix-up mixes fresh host bytes).
    uuids = {g.succeed("cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | xxd -p")
             for g in (first, second)}
    assert len(uuids) == 2
    # Disks are per guest: a write in one is not seen by the other.
    first.succeed("echo first-guest | dd of=/dev/vda conv=fsync 2>/dev/null")
    assert "first-guest" not in second.succeed("head -c 64 /dev/vda | tr -d '\\0'")


def test_corrupt_or_stale_snapshot_is_rebuilt_not_fatal(cache, messages, harness_factory, artifacts,
                                                         started):
    topology = topology_from_dict(BRIDGED)
    plan = harness_factory.plan(topology)
    from harness.guest.running import Guest

    unstarted = Guest(plan, artifacts / "key", name="key")  # its rendering names the entry
    entry = cache.entry(plan, unstarted.rendered)
    unstarted.shutdown()
    g = _launch(cache, harness_factory, topology, artifacts, "build", started)
    assert entry.usable() and g.timings.restored
    g.shutdown()

    # Same size, garbage in the middle: only a failed restore can tell.
    size = entry.path.stat().st_size
    with open(entry.path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 4096)
        f.seek(64)
        f.write(b"\xff" * 4096)
    g = _launch(cache, harness_factory, topology, artifacts, "after-corruption", started)
    assert g.succeed("echo alive").strip() == "alive"
    assert not g.timings.restored, "a corrupt snapshot cannot have restored"
    assert (artifacts / "after-corruption.restore-failed").exists()
    # Detected by the failed load itself (QEMU exits, or reports the stream
    # failed), not by running into the restore deadline.
    said = "\n".join(messages)
    assert "did not restore" in said and "did not finish within" not in said, said
    g.shutdown()
    # The next guest rebuilds the snapshot and restores from it.
    g = _launch(cache, harness_factory, topology, artifacts, "rebuilt", started)
    assert g.timings.restored and entry.usable()
    g.shutdown()

    # Truncated: detected before QEMU starts (size), rebuilt, restored.
    entry.path.write_bytes(entry.path.read_bytes()[: size // 3])
    assert not entry.usable()
    g = _launch(cache, harness_factory, topology, artifacts, "after-truncation", started)
    assert g.timings.restored and entry.usable()
    assert g.succeed("echo alive").strip() == "alive"
