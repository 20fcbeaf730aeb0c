"""Known QEMU gaps: where QEMU does not do what the KVM "PCI" TODO page asks.

Each gap names its seed item, the QEMU versions it holds for (and the machine
types, where a compat property decides it), the tests that show it and what
QEMU does instead.  The pytest plugin turns an entry into a strict xfail for a
test that carries `@pytest.mark.known_gap("<id>")` only when the QEMU under
test is inside the range, so a multi-QEMU nightly judges every binary by its
own version: a gap fixed in one binary is a plain pass there and still a known
failure in the other.

How a range is drawn (`versions`, half open: introduced <= v < fixed): every
measurement is kept in `evidence`, and tests/unit/test_known_gaps.py checks
each range against it (harness/qemu/evidence.py):
- `introduced` is the release series of the oldest version measured with the
  gap (7.2: nothing older has been run), so an older QEMU runs the test plain.
- `fixed` is the release series of the first version measured without it
  (10.0 when 10.0.2 passes and 7.2.22 fails).  It may stay open (None) only
  while the newest measured version still has the gap.
A range is wider than its evidence in between and beyond: `fixed=(10, 0)`
covers 8.0-9.2, where nothing was run, and an open end covers every future
QEMU.  Those versions are judged by inference, and the reports say so
(`KnownGap.basis`: "measured" only for a version in `evidence`, else
"inferred" with the measurements it rests on).  The xfail is strict, so a
wrong inference cannot hide a fix: a pass fails the run (XPASS) and names the
bound to move.  A development build (10.1.50, see facts.is_development) sits
between its release and the next; where a bound falls on that next release,
its answer is inferred too.

Nothing else decides which QEMU versions miss what (architecture note); the
facts of what a version does right live in qemu/facts.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.qemu.facts import Version
from harness.qemu.gap import FAILS, PASSES, KnownGap, Measurement
from harness.qemu.ranges import FirmwareRange, VersionRange
from harness.qemu.signature import Shows, Signature


def gap_for_difference(driver: str | None, field: str, qemu_value: object,
                       qemu_version: Version, machine: str,
                       gaps: tuple[KnownGap, ...] | None = None,
                       ancestors: Sequence[Any] = ()) -> KnownGap | None:
    """The known gap that explains a three-view difference on this QEMU and machine
    type (versioned: resolve aliases first), or None: an unexpected difference.
    `ancestors`: the topology's devices above the device (Topology.ancestors), for
    gaps that show only in one place (Shows.below)."""
    for gap in KNOWN_GAPS if gaps is None else gaps:
        if any(s.matches(driver, field, qemu_value, ancestors) for s in gap.shows) \
                and gap.holds(qemu_version, machine):
            return gap
    return None


def gaps_for_firmware(qemu_version: Version, family: str, version: str | None,
                      machine: str | None = None) -> list[KnownGap]:
    """The firmware-keyed gaps that hold for this QEMU and firmware."""
    return [g for g in KNOWN_GAPS if g.firmware is not None
            and g.holds(qemu_version, machine if g.machines or g.compat_property else None,
                        (family, version))]


# ---------------------------------------------------------------------------- the table
# Measured on this project's host under TCG: Debian 12's QEMU 7.2.22 and
# bookworm-backports' 10.0.2.  A new measurement goes into `evidence`; a range
# moves only with one (tests/unit/test_known_gaps.py checks that).

_BOTH = ("pc", "q35")
#: The oldest QEMU measured: no gap is claimed below the evidence.
SINCE_7_2 = VersionRange((7, 2))

KNOWN_GAPS: tuple[KnownGap, ...] = (
    KnownGap(
        id="ahci-bus-master-cleared-migration",
        seed="ahci-stability",
        does_instead="with Bus Master Enable cleared while the FIS receive engine is on, the "
                     "migration destination exits with status 1: 'AHCI: Failed to start FIS "
                     "receive engine'",
        spec="the destination loads the AHCI state of a function whose driver cleared Bus "
             "Master Enable (PCI COMMAND bit 2 is guest state like any other) and the disk "
             "keeps its data",
        versions=VersionRange((7, 2), fixed=(10, 0)),
        signature=Signature("HopFailure", "destination-load-failed", r"AHCI: Failed to start FIS"),
        tests=("test_bus_master_cleared_then_migrated_destination_loads_and_disk_works",),
        evidence=(
            Measurement("7.2.22", FAILS, ("q35",),
                        "source says completed; destination exits 1 with the message"),
            Measurement("10.0.2", PASSES, ("q35",), "destination runs, block 3 reads back"),
        ),
    ),
    KnownGap(
        id="tcg-migration-loses-dirty-pages",
        seed="ahci-stability",
        does_instead="under TCG, pages the guest wrote during a live migration arrive on the "
                     "destination with older contents than the paused source holds (lost "
                     "dirty pages, seen by comparing both RAMs before the destination runs); "
                     "the guest runs on stale memory and may crash later",
        spec="after a migration the destination's guest memory equals the source's at the "
             "moment it stopped: every page written before that holds its last write",
        versions=VersionRange((7, 2), fixed=(10, 0)),
        signature=Signature("HopFailure", "lost-dirty-pages"),
        tests=("test_q35_pingpong_memory_load_keeps_every_page",),
        evidence=(
            Measurement("7.2.22", FAILS, ("q35",),
                        "2x128 MiB regions: stale pages at hop 2 and hop 24, a GPF at hop 7 "
                        "(3 of 3 runs, facts page); pingpong --load memory (256 MiB, 64 "
                        "MiB/s, also 16 and flat out): the guest kernel broke at hop 1 in 5 of 5 "
                        "runs (BUG: unable to handle page fault; WARNING in "
                        "__hrtimer_run_queues; scheduling while atomic; GPF; NULL pointer "
                        "dereference); the host's RAM scan found the checker's own 65536 "
                        "pages consistent in the run it scanned: kernel pages were hit; "
                        "source/destination RAM compared at every switchover (ramdiff): "
                        "256 MiB at 64 MiB/s: 7-12 pages differ at hops 1, 1, 6, 9, 11, 41 "
                        "(runs of 24 and 6 hops identical); at 128 MiB/s: 8-21 pages at hop "
                        "1 in 4 of 4 runs; all kernel pages (one holds jiffies, older on the "
                        "destination), never a checker page"),
            Measurement("10.0.2", PASSES, ("q35",),
                        "72 and 62 hops clean (facts page); pingpong --load memory,fs: 20 "
                        "hops, 914 sweeps, 59.9 M page checks, no bad page; with the RAM "
                        "comparison: 24 hops identical at every switchover at 64 and at 128 "
                        "MiB/s"),
        ),
    ),
    KnownGap(
        id="gdbstub-stopped-migration-aborts", seed="ahci-stability",
        does_instead="the destination of a VM stopped by the gdbstub (runstate 'debug', stored "
                     "in the stream's globalstate) dies of SIGABRT: 'invalid runstate "
                     "transition: 'inmigrate' -> 'debug''",
        spec="a stopped VM migrates where it stopped and comes up stopped, ready to `cont`",
        versions=SINCE_7_2, tests=("test_vm_stopped_by_the_gdbstub_migrates_and_runs_on",),
        signature=Signature("HopFailure", "qemu-died", r"invalid runstate transition: "
                                                       r"'inmigrate' -> 'debug'"),
        evidence=(Measurement("7.2.22", FAILS, ("q35",), "after a breakpoint, a QMP stop and "
                              "HMP gdbserver none (both leave 'debug'), or one single-step"),
                  Measurement("10.0.2", FAILS, ("q35",), "after one single-step"))),
    KnownGap(
        id="cold-plugged-bridge-del-accepted",
        seed="bridge-hotplug-acpi-bsel",
        does_instead="QEMU answers device_del of a cold-plugged bridge with {} and then does "
                     "nothing (no DEVICE_DELETED, the bridge stays) instead of refusing it",
        spec="removal of a bridge the firmware described (not added by hotplug) is prevented, "
             "so a request that will never be carried out is refused (seed item: hotplug for "
             "devices behind PCI bridges)",
        versions=SINCE_7_2,
        signature=Signature("Failed", pattern=r"DID NOT RAISE .*QmpCommandError"),
        tests=("test_device_del_of_a_cold_plugged_bridge_is_refused",),
        evidence=(
            Measurement("7.2.22", FAILS, ("pc",), "device_del returned {}: DID NOT RAISE"),
            Measurement("10.0.2", FAILS, ("pc",), "device_del returned {}: DID NOT RAISE"),
        ),
    ),
    KnownGap(
        id="hot-added-bridge-not-described",
        seed="bridge-hotplug-acpi-bsel",
        does_instead="QEMU accepts device_add behind a hot-added bridge, but the bridge gets no "
                     "BSEL number (ACPI cannot describe hot-added bridges) and is its own SHPC "
                     "handler, which the guest does not drive: the guest never sees the device",
        spec="a device hot-plugged behind a hot-added bridge appears in the guest, as behind a "
             "cold-plugged one (seed item: hotplug for devices behind PCI bridges)",
        versions=SINCE_7_2,
        signature=Signature("NotSeenByGuest", pattern=r"never bound a driver to 'hnic'"),
        tests=("test_device_behind_a_hot_added_bridge_is_seen",),
        evidence=(
            Measurement("7.2.22", FAILS, ("pc",)),
            Measurement("10.0.2", FAILS, ("pc",),
                        ("3 of 3 alone: NotSeenByGuest after 40 s; once under -n 2 query-pci had "
                         "not yet listed the device (HotplugError, a plain failure)")),
        ),
    ),
    KnownGap(
        id="intx-declared-active-high",
        seed="intx-active-low",
        does_instead="QEMU declares every PCI interrupt link `Level, ActiveHigh, Shared` and "
                     "drives INT#x active-high",
        spec="INTA#-INTD# are active-low, level-triggered, shareable (PCI Local Bus 2.2.6): "
             "each routed link's _PRS/_CRS says Level, ActiveLow, Shared",
        versions=SINCE_7_2,
        signature=Signature(pattern=r"^PCI interrupt links not declared Level, ActiveLow"),
        tests=("test_pci_interrupt_links_are_active_low",),
        evidence=(
            Measurement("7.2.22", FAILS, _BOTH),
            Measurement("10.0.2", FAILS, _BOTH,
                        "pc LNKA-D, q35 LNKA-H and GSIA-H: _PRS/_CRS Level, ActiveHigh, Shared"),
        ),
    ),
    KnownGap(
        id="master-abort-not-emulated",
        seed="master-abort",
        does_instead="QEMU returns 0 for unclaimed memory reads and for a BAR with memory "
                     "decoding off, and never sets Received Master Abort",
        spec="a read nobody claims returns all-ones and sets the bridge's Received Master "
             "Abort bit (PCI-to-PCI Bridge 3.2.5.1, 3.2.5.14; PCIe: Unsupported Request)",
        versions=SINCE_7_2,
        signature=Signature(pattern=r"^spec: all-ones and Received Master Abort"),
        tests=("test_unclaimed_reads_return_all_ones_and_set_master_abort",),
        evidence=(
            Measurement("7.2.22", FAILS, _BOTH),
            Measurement("10.0.2", FAILS, _BOTH,
                        ("unclaimed window address reads 0x00000000, VGA BAR2 with decoding off "
                         "0x0000; secondary status never has 0x2000")),
        ),
    ),
    KnownGap(
        id="subtractive-decode-windows-only",
        seed="subtractive-decode",
        does_instead="QEMU's i82801b11-bridge reports prog-if 01 but forwards only inside its "
                     "windows (outside: memory reads 0, I/O 0xff)",
        spec="a bridge with programming interface 01 forwards every transaction nobody on the "
             "primary side claims, not only its windows (PCI-to-PCI Bridge 1.2, 3.2.5.1)",
        versions=SINCE_7_2,
        signature=Signature(pattern=r"^outside every window of the subtractive bridge"),
        tests=("test_subtractive_bridge_forwards_outside_its_windows",),
        evidence=(
            Measurement("7.2.22", FAILS, _BOTH),
            Measurement("10.0.2", FAILS, _BOTH,
                        ("BARs moved outside the windows: DISPI ID reads 0x0000 (0xb0c5 inside), "
                         "virtio status 0xff (0x0f inside)")),
        ),
    ),
    KnownGap(
        id="acpi-port-presence-detect-clear",
        seed="q35-hotplug",
        does_instead="with ACPI PCI hotplug (q35's default) a pcie-root-port reports Slot "
                     "Status Presence Detect State 0 although a device sits in its slot "
                     "(cold- or hot-plugged); only native hotplug sets it",
        spec="a downstream port that implements a slot reports Presence Detect State 1 while "
             "an adapter is in it (PCIe Base Spec, Slot Status register)",
        versions=SINCE_7_2,
        signature=Signature(pattern=r"^Presence Detect State with a device in the slot"),
        tests=("test_acpi_hotplug_port_reports_its_slot_occupied",),
        evidence=(
            Measurement("7.2.22", FAILS, ("q35",), "SltSta 0x0000 with a device in the slot; "
                        "0x0040 with ACPI hotplug off"),
            Measurement("10.0.2", FAILS, ("q35",), "SltSta 0x0000 with a device in the slot; "
                        "0x0040 with ACPI hotplug off"),
        ),
    ),
    KnownGap(
        id="acpi-hotplug-stops-at-hotplug-off-port",
        seed="q35-hotplug",
        does_instead="with ACPI PCI hotplug on, the bus of a bridge cold-plugged below a root "
                     "port with hotplug=off is not ACPI's: it keeps the bridge's own handler "
                     "(SHPC on a pci-bridge or pcie-pci-bridge, native PCIe on a downstream "
                     "port, none on a switch's upstream port)",
        spec="'use ACPI hotplug for everything' (KVM PCI TODO, Hotplug for Q35): with ACPI "
             "bridge hotplug on, every cold-plugged bridge's bus is hot-plugged through ACPI, "
             "whatever port it sits below",
        versions=VersionRange((7, 2), fixed=(10, 0)),
        machines=frozenset({"q35"}),
        shows=tuple(Shows("bus_hotplug", driver, handler, below=("hotplug", False))
                    for driver, handler in (("pci-bridge", "shpc"), ("pcie-pci-bridge", "shpc"),
                                            ("xio3130-downstream", "pcie-native"),
                                            ("x3130-upstream", "none"))),
        signature=Signature(pattern=r"^bridges below a hotplug=off port not ACPI-hotplugged"),
        tests=("test_bridges_below_a_hotplug_off_port_are_acpi_hotplugged",),
        evidence=(
            Measurement("7.2.22", FAILS, ("q35",),
                        "found by explore (seed 7301: 386 machines, 2 failures), shrunk to "
                        "ioh3420,hotplug=off + x3130-upstream (none) and + pci-bridge (shpc); "
                        "xio3130-downstream below: pcie-native; the hotplug=off port's own bus "
                        "has no QOM handler, so ACPI's plug callback never sees the bridges"),
            Measurement("10.0.2", PASSES, ("q35",),
                        "every one acpi-pcihp (QOM ICH9-LPC, facts HOTPLUG_OFF_PORT_QOM_HANDLER); "
                        "virtio-net-pci hot-plugged into the pci-bridge by ACPI: seen by the "
                        "guest, unplugged"),
        ),
    ),
    KnownGap(
        id="vga-legacy-io-ignores-io-enable",
        seed="vga-behind-bridge",
        does_instead="QEMU's VGA answers legacy I/O (0x3c0-0x3df) even with I/O Space Enable "
                     "cleared in its own COMMAND register",
        spec="a VGA decodes legacy I/O only while its COMMAND I/O Space bit is set (PCI 6.2.2), "
             "which is what lets several VGA cards coexist",
        versions=SINCE_7_2,
        signature=Signature(pattern=r"with I/O Space Enable off .*spec: 0xff/0xff"),
        tests=("test_vga_legacy_io_follows_the_devices_io_enable",),
        evidence=(
            Measurement("7.2.22", FAILS, _BOTH),
            Measurement("10.0.2", FAILS, _BOTH,
                        "with I/O Space Enable off ports 0x3c4/0x3cc still read 0x03/0x01"),
        ),
    ),
    KnownGap(
        id="ahci-tfes-only-seabios-stall",
        seed="ahci-stability",
        does_instead="an AHCI command that ends in error (SeaBIOS's first probe of a port, "
                     "IDENTIFY PACKET DEVICE, on a hard disk) raises only Task File Error "
                     "Status (PxIS bit 30), no D2H FIS interrupt (bit 0): SeaBIOS before 1.16.3 "
                     "waits out its 32 s request timeout on every boot from an AHCI hard disk",
        spec="the firmware starts the AHCI disk's boot sector within a second, as on QEMU 7.2 "
             "(QEMU 8.2's b523a3d54f3d made TFES and DHRS either/or, per AHCI 1.3.1 5.3.8.1, "
             "relying on a SeaBIOS that checks TFES: 1.16.3)",
        # By reading since 8.2.0 (b523a3d54f3d "hw/ide/ahci: trigger either error IRQ or
        # regular IRQ, not both", dropped from the 7.2.7 and 8.1.3 stable series for this
        # very stall); measured from 10.0.2.  No compat property gates it.
        versions=VersionRange((10, 0)),
        # Past 32 s the firmware log names the timeout; at a shorter deadline (20 s at
        # multiplier 1) the phase ends first and the verdict names this gap.
        signature=Signature(pattern=r"stopped in the firmware phase: (?:the firmware stalled: .* "
                                    r"waited out an AHCI request timeout|.*this is known gap "
                                    r"ahci-tfes-only-seabios-stall)"),
        tests=("test_boot_from_ahci",),
        firmware=FirmwareRange("seabios", fixed=(1, 16, 3)),
        usual_s=0.2,  # firmware phase p50 where it does not hold: 0.19-0.22 s (below)
        evidence=(
            Measurement("7.2.22", PASSES, _BOTH, "boot-stress firmware phase p50 0.22 s",
                        firmware="seabios 1.16.2-debian-1.16.2-1"),
            Measurement("10.0.2", FAILS, ("pc", "q35", "pc-q35-7.2"),
                        "'WARNING - Timeout at ahci_command:153!' after a firmware phase of "
                        "32.1-32.2 s (q35), 32.3 s (pc-q35-7.2), 32.4 s (pc, ich9-ahci); "
                        "an AHCI CD-ROM, a PIIX IDE disk and no disk are fast",
                        firmware="seabios 1.16.2-debian-1.16.2-1"),
            Measurement("10.0.2", PASSES, _BOTH, "boot-stress firmware phase p50 0.19-0.20 s",
                        firmware="seabios 1.16.3-debian-1.16.3-2~bpo12+1"),
        ),
    ),
)
