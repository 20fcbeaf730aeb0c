"""AHCI across live migration, deterministic cases (seed item "ahci-stability").

(a) The known bug: the guest clears Bus Master Enable on q35's AHCI (00:1f.2)
    while the port's FIS receive engine is on; the destination then cannot
    load the device state.  The test asserts the correct behaviour and is a
    strict known failure, so a fixed QEMU turns it into a loud XPASS.
(b) QEMU's own `ahci_migrate_halted_io` pattern: a blkdebug rule fails the
    first write_aio once, werror=stop halts the VM (BLOCK_IO_ERROR), the halted
    VM is migrated to a destination without blkdebug, `cont` there retries the
    write, and the data must equal what the guest wrote.  The topology renderer
    has no blkdebug, so this test builds the drive with LaunchPlan(extra_args=).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.guest.running import Guest
from harness.scenarios.migration.hop import migrate, start_destination
from harness.topology import topology_from_dict
from harness.topology.tree import builtin_path
from harness.workloads.blocks import BLOCK_SIZE, block_bytes, block_md5, find_disk

pytestmark = pytest.mark.seed("ahci-stability")

AHCI_PCI = "00:1f.2"      # q35's built-in AHCI (drivers.BUILTIN["q35"])
COMMAND_BME = 0x0004      # PCI COMMAND bit 2: Bus Master Enable
SEED = 4242


def _pattern_write(device: str, block: int, name: str, generation: int = 0) -> str:
    line = f"pcih {name} seed={SEED} blk={block:06d} gen={generation:06d}"
    return (f"yes \"$(printf '%-63s' '{line}')\" | head -c {BLOCK_SIZE} | "
            f"dd of={device} bs={BLOCK_SIZE} seek={block} count=1 iflag=fullblock oflag=direct")


def _read_md5(guest: Guest, device: str, block: int) -> str:
    return guest.succeed(f"dd if={device} bs={BLOCK_SIZE} skip={block} count=1 iflag=direct "
                         "2>/dev/null | md5sum").split()[0]


# A strict known failure only on the QEMU versions harness/qemu/known.py scopes it
# to (measured: 7.2.22 fails, 10.0.2 passes).
@pytest.mark.known_gap("ahci-bus-master-cleared-migration")
def test_bus_master_cleared_then_migrated_destination_loads_and_disk_works(make_guest, artifacts):
    topology = topology_from_dict({"machine": "q35", "ahci_disk": "64M"})
    src = make_guest(topology, name="src")
    device = find_disk(src, builtin_path(topology, "ich9-ahci"), "q35 AHCI disk")
    src.succeed(_pattern_write(device, 3, "bme"))
    # The ahci driver has started port 0 (PxCMD.FRE set): clear only BME.
    src.succeed(f"setpci -s {AHCI_PCI} COMMAND=0000:{COMMAND_BME:04x}")
    command = int(src.succeed(f"setpci -s {AHCI_PCI} COMMAND").strip(), 16)
    if command & COMMAND_BME:
        # A precondition, not the known bug: a harness error, which the gap's
        # signature does not take.
        raise HarnessError(f"BME still set after clearing it: COMMAND={command:#06x}")
    dst = start_destination(src, artifacts / "dst", "dst", 1)
    try:
        # The gap is a HopFailure of kind destination-load-failed with QEMU's own
        # message (its signature in harness/qemu/known.py); any other failure of
        # the hop (a killed QEMU, a dead SSH) is a plain failure.
        migrate(src, dst, 1)
        dst.succeed(f"setpci -s {AHCI_PCI} COMMAND={COMMAND_BME:04x}:{COMMAND_BME:04x}")
        got = _read_md5(dst, device, 3)
        want = block_md5("bme", SEED, 3, 0)
        assert got == want, f"block 3 after the hop: md5 {got}, written {want}"
    finally:
        dst.shutdown()


def _blkdebug_args(image: Path, rules: Path | None) -> tuple[str, ...]:
    """An ide-hd on the built-in AHCI port 0 with werror/rerror=stop.  With `rules`
    (the source) blkdebug sits between the raw format node and the file: the
    format driver fires the write_aio event on its child, as qcow2 does on the
    blkdebug: protocol in ahci-test; without (the destination) the file is plain."""
    if rules is None:
        blockdev = f"node-name=hd0,driver=raw,file.driver=file,file.filename={image}"
    else:
        blockdev = (f"node-name=hd0,driver=raw,file.driver=blkdebug,file.config={rules},"
                    f"file.image.driver=file,file.image.filename={image}")
    return ("-blockdev", blockdev,
            "-device", "ide-hd,id=halted.hd,bus=ide.0,drive=hd0,werror=stop,rerror=stop")


def test_write_halted_by_io_error_survives_migration_and_retries(harness_factory, artifacts):
    image = artifacts / "halted.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "16M"], check=True)
    rules = artifacts / "blkdebug.conf"
    # ahci-test.c: fail the first write once with EIO.
    rules.write_text('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n')
    topology = topology_from_dict({"machine": "q35"})
    src = Guest(harness_factory.plan(topology, extra_args=_blkdebug_args(image, rules)),
                artifacts / "src", name="src")
    dst = None
    try:
        src.launch()
        src.succeed("modprobe -a ahci sd_mod")
        device = src.wait_until_succeeds(
            "for b in /sys/block/sd*; do [ -e $b ] && echo /dev/${b##*/}; done | grep .",
            timeout=20).split()[0]
        block = 5
        # Backgrounded behind a short sleep: the VM halts mid-write, after SSH returned.
        src.succeed(f"(sleep 0.3; {_pattern_write(device, block, 'halt')}; echo $? > /tmp/ddrc) "
                    ">/dev/null 2>&1 &")
        assert src.qmp is not None
        event = src.qmp.wait_event("BLOCK_IO_ERROR", Deadline(30, "BLOCK_IO_ERROR"))
        assert (event["data"]["operation"], event["data"]["action"]) == ("write", "stop"), event
        status = src.qmp.execute("query-status")
        assert status["status"] == "io-error", status
        dst = Guest(harness_factory.plan(topology, extra_args=_blkdebug_args(image, None)),
                    artifacts / "dst", name="dst", same_machine_as=src)
        dst.launch(incoming="defer")
        stats = migrate(src, dst, 1, connect=False)
        assert stats.destination_status in ("io-error", "paused"), stats
        src.shutdown()
        dst.qmp_execute("cont")   # retries the halted write on the destination
        dst.connect(Deadline(30, "SSH to the destination"))
        rc = dst.wait_until_succeeds("cat /tmp/ddrc", timeout=30).strip()
        assert rc == "0", f"dd exit status after cont: {rc}"
        want = block_md5("halt", SEED, block, 0)
        got = _read_md5(dst, device, block)
        assert got == want, f"block {block} read in the guest: md5 {got}, written {want}"
        dst.shutdown()
        on_disk = image.read_bytes()[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]
        assert on_disk == block_bytes("halt", SEED, block, 0), (
            f"image bytes of block {block} start {on_disk[:64]!r}")
    finally:
        src.shutdown()
        if dst is not None:
            dst.shutdown()
