"""boot-stress without QEMU: firmware-log and console phase parsing, the JSON
shape, the boot topology's QEMU arguments, the disk layout, option errors.

The SeaBIOS logs in data/ were recorded on QEMU 7.2.22: a q35 boot of the
AHCI-root guest, and a pc boot of the same disk with its boot sector zeroed.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import TopologyError
from harness.guest.diskimage import (
    FIRST_LBA,
    SECTOR,
    Partition,
    assemble_disk,
    mbr_sector,
    parse_mbr,
)
from harness.guest.running import write_reproduce_script
from harness.scenarios.bootstress.phases import (
    AHCI_ROOT_PHASES,
    STOP_LINE,
    BootRecord,
    check_marker,
    guest_uptime,
    read_firmware_log,
    root_controller,
    root_mount_problem,
    root_on_ahci_problem,
    summary,
    user_disk_phases,
)
from harness.scenarios.bootstress.run import boot_topology
from harness.topology import Device, Topology, render
from harness.topology.data import BootDisk

DATA = Path(__file__).parent / "data"
DISK_NAME = "AHCI/0: QEMU HARDDISK ATA-7 Hard-Disk (97 MiBytes)"


# ---- firmware log -----------------------------------------------------------

def test_firmware_log_of_a_good_boot_names_the_ahci_disk_and_the_handoff():
    view = read_firmware_log((DATA / "seabios-q35-ahci-boot.log").read_text())
    assert view.ahci_disks == (DISK_NAME,), view
    assert view.handed_off and not view.gave_up and view.failures == ()
    assert view.stopped() is None


def test_firmware_log_of_a_zeroed_boot_sector_says_why_it_stopped():
    view = read_firmware_log((DATA / "seabios-pc-zeroed-mbr.log").read_text())
    assert not view.handed_off and view.gave_up
    assert view.failures == ("Boot failed: not a bootable disk", "No bootable device."), view
    reason = view.stopped()
    assert reason is not None and "not a bootable disk" in reason and DISK_NAME in reason, reason


def test_firmware_log_without_an_ahci_disk_says_so():
    text = (DATA / "seabios-pc-zeroed-mbr.log").read_text()
    text = "\n".join(line for line in text.splitlines() if "registering" not in line)
    reason = read_firmware_log(text).stopped()
    assert reason is not None and "found no AHCI disk" in reason, reason


def test_firmware_log_still_booting_is_no_verdict():
    text = (DATA / "seabios-q35-ahci-boot.log").read_text()
    early = text[:text.index("Booting from Hard Disk")]
    view = read_firmware_log(early)
    assert (view.handed_off, view.gave_up, view.stopped()) == (False, False, None)


# ---- console markers ----------------------------------------------------------

@pytest.mark.parametrize(("phase", "line", "problem"), [
    ("fsck", "HARNESS-FSCK 0 2.23", None),
    ("fsck", "HARNESS-FSCK 4 2.23", "exited with status 4"),
    ("fsck", "HARNESS-FSCK 8 2.23", "exited with status 8"),
    ("root", "HARNESS-ROOT rw,relatime 2.28", None),
    ("root", "HARNESS-ROOT ro,relatime 2.28", "not read-write"),
    ("root", "HARNESS-ROOT rwx 2.28", "not read-write"),
])
def test_marker_checks(phase, line, problem):
    found = check_marker(phase, line)
    if problem is None:
        assert found is None, found
    else:
        assert found is not None and problem in found, (line, found)


def test_phase_markers_match_what_the_guest_prints():
    console = ("SYSLINUX 6.04 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al\r\n"
               "Loading /vmlinuz... ok\r\nLoading /initrd.img...ok\r\nHARNESS-KERNEL 2.46\r\n"
               "HARNESS-FSCK 0 4.77\r\nHARNESS-ROOT rw,relatime 4.94\r\nHARNESS-INIT 5.41\r\n"
               "HARNESS-READY 7.07\r\n")
    import re
    position = 0
    for phase in AHCI_ROOT_PHASES:
        if phase.marker is None:
            continue
        match = re.compile(phase.marker).search(console, position)
        assert match is not None, (phase.name, phase.marker, console[position:])
        position = match.end()  # markers come in phase order
    assert STOP_LINE.search(console) is None


@pytest.mark.parametrize(("text", "line"), [
    ("x\r\nHARNESS-ERROR root partition /dev/sda2 did not appear within 30 s\r\nmore",
     "HARNESS-ERROR root partition /dev/sda2 did not appear within 30 s"),
    ("ata1.00: failed command: READ DMA EXT\r\n", "ata1.00: failed command: READ DMA EXT"),
    ("[    3.1] Kernel panic - not syncing: VFS: Unable to mount root\n",
     "[    3.1] Kernel panic - not syncing: VFS: Unable to mount root"),
    ("Loading /vmlinuz... failed: No such file or directory\r\n",
     "Loading /vmlinuz... failed: No such file or directory"),
])
def test_stop_lines_carry_the_whole_line(text, line):
    match = STOP_LINE.search(text)
    assert match is not None and match.group(0).strip() == line, (text, match)


def test_stop_line_needs_the_line_end():
    # pexpect matches as soon as it can: without the line end in the pattern a
    # reason would be cut to its first word.
    assert STOP_LINE.search("HARNESS-ERROR root partit") is None


# ---- checks over SSH ------------------------------------------------------------

MOUNTS_RW = "/dev/sda2 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n"


def test_root_mount_rw_and_ro():
    assert root_mount_problem(MOUNTS_RW) is None
    problem = root_mount_problem(MOUNTS_RW.replace("rw,relatime", "ro,relatime"))
    assert problem is not None and "'ro,relatime'" in problem, problem
    problem = root_mount_problem("proc /proc proc rw 0 0\n")
    assert problem is not None and "no entry for /" in problem, problem


AHCI_PATH = ("/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/"
             "block/sda/sda2")
BRIDGED_PATH = ("/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/ata1/host0/"
                "target0:0:0/0:0:0:0/block/sda/sda2")
VIRTIO_PATH = "/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda/vda1"


def test_root_controller_is_the_last_pci_function_on_the_path():
    assert root_controller(AHCI_PATH) == "0000:00:1f.2"
    assert root_controller(BRIDGED_PATH) == "0000:01:00.0"
    assert root_controller("/sys/devices/virtual/block/loop0") is None


def test_root_on_ahci_check():
    assert root_on_ahci_problem(AHCI_PATH, "ahci") is None
    assert root_on_ahci_problem(BRIDGED_PATH, "ahci") is None
    problem = root_on_ahci_problem(VIRTIO_PATH, "virtio-pci")
    assert problem is not None and "0000:00:03.0" in problem and "virtio-pci" in problem
    problem = root_on_ahci_problem(AHCI_PATH, "ata_piix")
    assert problem is not None and "ata_piix" in problem, problem


# ---- records and the JSON object ----------------------------------------------------

def _record(number: int, ends: list[float], stopped_in: str | None = None) -> BootRecord:
    names = [p.name for p in AHCI_ROOT_PHASES]
    record = BootRecord(number, ended_at=dict(zip(names, ends, strict=False)))
    if stopped_in:
        record.stopped_in, record.reason = stopped_in, "because"
        record.artifacts = f"/tmp/a/boot-{number:04d}"
    return record


@pytest.mark.parametrize(("text", "uptime"), [
    ("HARNESS-KERNEL 2.46", 2.46), ("HARNESS-FSCK 0 4.77", 4.77),
    ("HARNESS-ROOT rw,relatime 4.94", 4.94), ("HARNESS-READY 7.07\r", 7.07),
    ("SYSLINUX 6.04 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al", None),
    ("Loading /initrd.img...ok", None), ("login: 3.5", None),
])
def test_guest_uptime_from_markers(text, uptime):
    assert guest_uptime(text) == uptime


def test_durations_are_the_differences_between_phase_ends():
    record = _record(1, [0.5, 0.6, 0.9, 4.0, 5.5, 5.6, 7.0, 7.5])
    assert record.durations() == {"firmware": 0.5, "bootloader": 0.1, "load": 0.3,
                                  "kernel": 3.1, "fsck": 1.5, "root": 0.1,
                                  "userspace": 1.4, "ssh": 0.5}
    assert record.total() == 7.5


def test_summary_json_shape_and_percentiles():
    records = [_record(1, [0.3, 0.4, 0.5, 3.5, 4.5, 4.6, 6.0, 6.5]),
               _record(2, [0.5, 0.6, 0.7, 3.7, 4.7, 4.8, 6.2, 6.7]),
               _record(3, [0.4, 0.5, 0.6, 3.6, 4.6, 4.7, 6.1, 6.6]),
               _record(4, [9.0], stopped_in="bootloader")]
    result = json.loads(json.dumps(summary(records, AHCI_ROOT_PHASES, {"machine": "q35"})))
    assert result["boots"] == 3 and isinstance(result["boots"], int)
    assert result["attempted"] == 4 and result["ok"] is False
    assert result["machine"] == "q35"
    # Nearest rank over the three completed boots: p50 the middle, p95 the largest;
    # the stopped boot's 9 s firmware phase is not among them.
    assert result["phases"]["firmware"] == {"p50": 0.4, "p95": 0.5}
    assert result["phases"]["kernel"] == {"p50": 3.0, "p95": 3.0}
    assert result["total_s"] == {"p50": 6.6, "p95": 6.7}
    assert set(result["phases"]) == {p.name for p in AHCI_ROOT_PHASES}
    assert result["failures"] == [
        "boot 4 stopped in the bootloader phase: because; artifacts in /tmp/a/boot-0004"]
    assert [r["boot"] for r in result["boot_records"]] == [1, 2, 3, 4]
    assert result["boot_records"][3]["stopped_in"] == "bootloader"
    assert result["boot_records"][3]["phases"] == {"firmware": 9.0}


def test_summary_without_boots_is_not_ok_and_failures_is_a_list():
    result = summary([], AHCI_ROOT_PHASES, {})
    assert result["ok"] is False and result["boots"] == 0 and result["failures"] == []
    assert result["phases"]["firmware"] == {"p50": None, "p95": None}


def test_user_disk_phases_are_firmware_then_ready():
    phases = user_disk_phases(r"login:", 300)
    assert [p.name for p in phases] == ["firmware", "ready"]
    assert phases[1].marker == "login:" and phases[1].seconds == 300


# ---- topology and QEMU arguments ---------------------------------------------------

def _argv(topology: Topology, tmp_path: Path) -> list[str]:
    return list(render(topology, scratch_dir=tmp_path, mgmt_mac="52:54:00:00:00:01").argv)


def _device(argv: list[str], driver: str) -> str:
    found = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"
             and argv[i + 1].startswith(driver + ",")]
    assert len(found) == 1, (driver, argv)
    return found[0]


def test_q35_boots_from_the_builtin_ahci(tmp_path):
    topo = boot_topology("q35", Path("/img/disk.raw"), "raw")
    argv = _argv(topo, tmp_path)
    assert argv[argv.index("-boot") + 1] == "strict=on"
    hd = _device(argv, "ide-hd")
    assert "bus=ide.0" in hd and "bootindex=0" in hd and "drive=boot.disk" in hd, hd
    disks = render(topo, scratch_dir=tmp_path, mgmt_mac="52:54:00:00:00:01").scratch_disks
    assert [(d.backing, d.backing_format) for d in disks] == [(Path("/img/disk.raw"), "raw")]
    assert disks[0].path.parent == tmp_path  # the overlay, never the image


def test_pc_boots_from_an_ich9_ahci(tmp_path):
    argv = _argv(boot_topology("pc", Path("/img/disk.raw"), "raw"), tmp_path)
    assert "bus=pci.0" in _device(argv, "ich9-ahci")
    assert "bus=sata0.0" in _device(argv, "ide-hd")


@pytest.mark.parametrize(("machine", "bridge"), [("pc", "pci-bridge"),
                                                 ("q35", "pcie-root-port")])
def test_behind_a_bridge(tmp_path, machine, bridge):
    argv = _argv(boot_topology(machine, Path("/img/d.qcow2"), "qcow2", behind_bridge=True),
                 tmp_path)
    bridge_id = _device(argv, bridge).split("id=")[1].split(",")[0]
    assert f"bus={bridge_id}," in _device(argv, "ich9-ahci")
    assert "bus=sata0.0" in _device(argv, "ide-hd")


@pytest.mark.parametrize(("topology", "message"), [
    (Topology(machine="pc", boot_disk=BootDisk("/d")), "needs q35"),
    (Topology(machine="q35", ahci_disk=1 << 20, boot_disk=BootDisk("/d")), "port 0"),
    (Topology(machine="q35", boot_disk=BootDisk("/d", controller="nic")), "not an ich9-ahci"),
    (Topology(machine="q35", devices=(Device(id="nic", driver="e1000e"),),
              boot_disk=BootDisk("/d", controller="nic")), "not an ich9-ahci"),
    (Topology(machine="pc", devices=(Device(id="s", driver="ich9-ahci", disk=1 << 20),),
              boot_disk=BootDisk("/d", controller="s")), "port 0"),
])
def test_boot_disk_placement_errors(topology, message):
    from harness.topology import validate
    with pytest.raises(TopologyError, match=message):
        validate(topology)


def test_cache_key_covers_the_boot_disk_only_when_there_is_one():
    plain = Topology(machine="q35")
    assert Topology(machine="q35", boot_disk=None).cache_key() == plain.cache_key()
    one = Topology(machine="q35", boot_disk=BootDisk("/a.raw")).cache_key()
    other = Topology(machine="q35", boot_disk=BootDisk("/b.raw")).cache_key()
    assert len({plain.cache_key(), one, other}) == 3


def test_reproduce_script_makes_a_fresh_overlay(tmp_path):
    topo = boot_topology("q35", Path("/img/disk.raw"), "raw")
    rendered = render(topo, scratch_dir=tmp_path / "disks", mgmt_mac="52:54:00:00:00:01")
    argv = ["qemu", "-chardev", f"file,id=seabios,path={tmp_path / 'firmware.log'}",
            *rendered.argv]
    script = tmp_path / "reproduce.sh"
    write_reproduce_script(script, argv, tmp_path / "run", tmp_path,
                           overlays=rendered.scratch_disks)
    text = script.read_text()
    assert 'qemu-img create -q -f qcow2 -b /img/disk.raw -F raw "$RUN/boot.qcow2"' in text
    assert "file.filename=$RUN/boot.qcow2" in text and str(tmp_path / "disks") not in text
    assert "path=$RUN/firmware.log" in text


# ---- disk layout ----------------------------------------------------------------------

def test_mbr_round_trip():
    parts = [Partition(2048, 65536, 0x06, bootable=True), Partition(67584, 131072, 0x83)]
    sector = mbr_sector(b"\xeb\xfe" * 10, parts, 0x12345678)
    assert len(sector) == SECTOR and sector[:20] == b"\xeb\xfe" * 10
    assert struct.unpack_from("<I", sector, 440)[0] == 0x12345678
    assert parse_mbr(sector) == parts


def test_mbr_refuses_oversized_boot_code():
    from harness.errors import ImageBuildError
    with pytest.raises(ImageBuildError, match="441 bytes"):
        mbr_sector(b"\0" * 441, [], 0)
    with pytest.raises(ValueError, match="55 AA"):
        parse_mbr(b"\0" * SECTOR)


def test_assemble_disk_puts_each_piece_at_its_partition(tmp_path):
    boot, root = tmp_path / "boot", tmp_path / "root"
    boot.write_bytes(b"B" * (3 * SECTOR + 0) + b"b" * SECTOR)        # 4 sectors
    root.write_bytes(b"R" * SECTOR * 2 + b"r" * SECTOR)                 # 3 sectors
    disk = tmp_path / "disk.raw"
    parts = assemble_disk(disk, b"\xfa" * 440, boot, root)
    data = disk.read_bytes()
    assert parse_mbr(data[:SECTOR]) == parts
    assert parts[0] == Partition(FIRST_LBA, 4, 0x06, True)
    assert parts[1].start_lba == 2 * FIRST_LBA and parts[1].start_lba % FIRST_LBA == 0
    assert data[FIRST_LBA * SECTOR:(FIRST_LBA + 4) * SECTOR] == boot.read_bytes()
    start = parts[1].start_lba * SECTOR
    assert data[start:start + 3 * SECTOR] == root.read_bytes()
    assert len(data) == start + 3 * SECTOR


# ---- options ------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--disk", "/nonexistent.img"], "--disk and --ready go together"),
    (["--ready", "login:"], "--disk and --ready go together"),
    (["--disk", "/nonexistent.img", "--ready", "("], "not a regular expression"),
    (["--disk", "/nonexistent.img", "--ready", "login:"], "does not exist"),
    (["--boots", "3", "--max-time", "10m"], "--max-time limits --until-fail"),
])
def test_bad_options_are_user_errors(capsys, argv, message):
    status = main(["boot-stress", "--machine", "q35", *argv])
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err, err


def test_zero_boots_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["boot-stress", "--machine", "q35", "--boots", "0"])
    assert exc.value.code == 2
    assert "not a positive number of boots" in capsys.readouterr().err


# ---- the run loop (boots faked) ----------------------------------------------------------

def _stress(monkeypatch, outcomes, **options):
    """A BootStress whose boots end as `outcomes` says: "ok", "stop" or "interrupt"."""
    from types import SimpleNamespace

    from harness.scenarios.bootstress.run import BootStress, BootStressOptions

    binary = SimpleNamespace(path=Path("/nonexistent/qemu"), given=None, version="7.2.22",
                             resolve_machine=lambda machine: machine)
    plan = SimpleNamespace(topology=boot_topology("q35", Path("/d.raw"), "raw"),
                           firmware_log=True, firmware="seabios", binary=binary, boot_guest=True)
    shown: list[str] = []
    stress = BootStress(plan, Path("/nonexistent"),  # type: ignore[arg-type]
                        BootStressOptions(phases=AHCI_ROOT_PHASES, **options), shown.append)
    pending = list(outcomes)

    def boot_once(number):
        outcome = pending.pop(0)
        if outcome == "interrupt":
            raise KeyboardInterrupt
        return _record(number, [0.5, 1.0], stopped_in="firmware" if outcome == "stop" else None)

    monkeypatch.setattr(stress, "boot_once", boot_once)
    return stress, shown


def test_run_stops_at_the_count(monkeypatch):
    stress, shown = _stress(monkeypatch, ["ok"] * 3, boots=3)
    run = stress.run()
    assert (len(run.records), run.stopped_by) == (3, "boots")
    assert len(shown) == 3 and shown[0].startswith("boot 1/3: ok"), shown


def test_run_stops_at_the_first_failure_unless_keep_going(monkeypatch):
    stress, shown = _stress(monkeypatch, ["ok", "stop", "ok"], boots=3)
    run = stress.run()
    assert ([r.ok for r in run.records], run.stopped_by) == ([True, False], "failure")
    assert "STOPPED in the firmware phase" in shown[1], shown
    stress, _ = _stress(monkeypatch, ["ok", "stop", "ok"], boots=3, keep_going=True)
    run = stress.run()
    assert ([r.ok for r in run.records], run.stopped_by) == ([True, False, True], "boots")


def test_until_fail_runs_until_a_boot_stops(monkeypatch):
    stress, _ = _stress(monkeypatch, ["ok"] * 5 + ["stop"], boots=None)
    run = stress.run()
    assert (len(run.records), run.stopped_by) == (6, "failure")


def test_ctrl_c_ends_the_run_with_the_boots_so_far(monkeypatch):
    stress, _ = _stress(monkeypatch, ["ok", "ok", "interrupt"], boots=None)
    run = stress.run()
    assert (len(run.records), run.stopped_by) == (2, "interrupted")
    result = summary(run.records, AHCI_ROOT_PHASES, {})
    assert result["boots"] == 2 and result["failures"] == []


def test_max_time_ends_an_until_fail_run(monkeypatch):
    stress, _ = _stress(monkeypatch, ["ok"] * 100, boots=None, max_time_s=0.0)
    run = stress.run()
    assert (len(run.records), run.stopped_by) == (0, "max-time")
