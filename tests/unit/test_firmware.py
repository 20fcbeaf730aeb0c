"""--firmware: specs resolved against a QEMU's firmware directories, versions read from
images, OVMF's pflash arguments, UEFI boot-manager lines, the SeaBIOS AHCI stall, the
known gap keyed by QEMU and firmware, GRUB's configuration (no QEMU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.guest.diskimage import GRUB_LOADED, GRUB_STARTED, grub_cfg, syslinux_entry
from harness.qemu.evidence import evidence_problems
from harness.qemu.firmware import (
    launcher_dirs,
    parse_specs,
    resolve_firmware,
    seabios_version,
    spec_files,
    version_in_log,
)
from harness.qemu.known import (
    FAILS,
    PASSES,
    KnownGap,
    Measurement,
    VersionRange,
    gaps_for_firmware,
)
from harness.qemu.ranges import FirmwareRange, parse_firmware_version
from harness.scenarios.bootstress.phases import read_firmware_log, read_uefi_console

SEABIOS_162 = b"\x00junk\x00SeaBIOS (version %s)\n\x001.16.2-debian-1.16.2-1\x00more\x00"
SEABIOS_REL = b"\x00SeaBIOS (version %s)\x00rel-1.16.3-0-ga6ed6b701f0a\x00"


@pytest.mark.parametrize(("data", "version"), [
    (SEABIOS_162, "1.16.2-debian-1.16.2-1"),
    (SEABIOS_REL, "rel-1.16.3-0-ga6ed6b701f0a"),
    (b"\x001.16.2\x00 but no name of the firmware", None),   # not SeaBIOS at all
    (b"SeaBIOS without a version string", None),
])
def test_seabios_version_from_the_image(data, version):
    assert seabios_version(data) == version


def test_seabios_version_from_its_log():
    assert version_in_log("SeaBIOS (version 1.16.2-debian-1.16.2-1)\nBUILD: gcc") == \
        "1.16.2-debian-1.16.2-1"
    assert version_in_log("BdsDxe: loading Boot0001") is None


def _qemu_tree(tmp_path: Path, bios: bytes | None = SEABIOS_162, edk2: bool = False) -> Path:
    """<prefix>/bin/qemu-system-x86_64 with <prefix>/share/qemu holding firmware."""
    binary = tmp_path / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\x7fELF")
    share = tmp_path / "share" / "qemu"
    share.mkdir(parents=True)
    if bios is not None:
        (share / "bios-256k.bin").write_bytes(bios)
    if edk2:
        (share / "edk2-x86_64-code.fd").write_bytes(b"code")
        (share / "edk2-i386-vars.fd").write_bytes(b"vars")
    return binary


def test_names_pick_the_qemus_own_firmware(tmp_path):
    binary = _qemu_tree(tmp_path, edk2=True)
    seabios = resolve_firmware("seabios", binary)
    assert (seabios.kind, seabios.version, seabios.qemu_args(None)) == \
        ("seabios", "1.16.2-debian-1.16.2-1", [])   # QEMU's default: no -bios
    ovmf = resolve_firmware("ovmf", binary)
    assert ovmf.uefi and ovmf.image == tmp_path / "share/qemu/edk2-x86_64-code.fd"
    assert ovmf.vars_template == tmp_path / "share/qemu/edk2-i386-vars.fd"
    assert ovmf.qemu_args(Path("/run/v,1.fd")) == [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf.image}",
        "-drive", "if=pflash,format=raw,unit=1,file=/run/v,,1.fd"]   # commas escaped


def test_a_file_is_a_bios_image_with_its_version(tmp_path):
    image = tmp_path / "bios.bin"
    image.write_bytes(SEABIOS_REL)
    firmware = resolve_firmware(str(image), _qemu_tree(tmp_path / "q"))
    assert (firmware.kind, firmware.version, firmware.qemu_args(None)) == \
        ("seabios", "rel-1.16.3-0-ga6ed6b701f0a", ["-bios", str(image)])
    assert firmware.label() == "SeaBIOS rel-1.16.3-0-ga6ed6b701f0a"
    assert spec_files(str(image)) == [image] and spec_files("ovmf") == []


def test_ovmf_file_finds_its_variable_store_or_says_how_to_give_it(tmp_path):
    code = tmp_path / "OVMF_CODE_4M.fd"
    code.write_bytes(b"code")
    with pytest.raises(UserError, match="no variable store template") as exc:
        resolve_firmware(f"ovmf:{code}", _qemu_tree(tmp_path / "q"))
    assert "ovmf:CODE.fd,VARS.fd" in (exc.value.fix or "")
    (tmp_path / "OVMF_VARS_4M.fd").write_bytes(b"vars")
    firmware = resolve_firmware(f"ovmf:{code}", _qemu_tree(tmp_path / "q2"))
    assert firmware.vars_template == tmp_path / "OVMF_VARS_4M.fd"


@pytest.mark.parametrize(("spec", "words"), [
    ("sebios", "neither a firmware name nor a file"),
    ("/nonexistent/bios.bin", "does not exist"),
    ("ovmf:/nonexistent/CODE.fd", "does not exist"),
])
def test_bad_specs_are_one_paragraph_errors(tmp_path, spec, words):
    with pytest.raises(UserError, match=words):
        resolve_firmware(spec, _qemu_tree(tmp_path))


def test_firmware_get_marker_gives_the_version_an_image_lacks(tmp_path):
    root = tmp_path / "1.0-1" / "root" / "usr" / "share" / "OVMF"
    root.mkdir(parents=True)
    (root / "OVMF_CODE_4M.fd").write_bytes(b"compressed")
    (root / "OVMF_VARS_4M.fd").write_bytes(b"vars")
    (tmp_path / "1.0-1" / "firmware.json").write_text(json.dumps({"package_version": "2025.02-8"}))
    firmware = resolve_firmware(f"ovmf:{root / 'OVMF_CODE_4M.fd'}", _qemu_tree(tmp_path / "q"))
    assert firmware.label() == "OVMF 2025.02-8"


def test_launcher_dirs_are_read_from_its_exec_line(tmp_path):
    launcher = tmp_path / "qemu"
    launcher.write_text("#!/bin/sh\nexport X=1\nexec '/q/bin/qemu' -L '/q/share/qemu' "
                        "-L /q/share/seabios \"$@\"\n")
    assert launcher_dirs(launcher) == [Path("/q/share/qemu"), Path("/q/share/seabios")]
    assert launcher_dirs(tmp_path / "missing") == []


def test_nightly_firmware_list():
    assert parse_specs(None) == ["seabios"]
    assert parse_specs(["a.bin", " ovmf "]) == ["a.bin", "ovmf"]
    with pytest.raises(UserError, match="twice"):
        parse_specs(["ovmf", "ovmf"])


# ---- what the firmware says during a boot

OVMF_BOOTS = (
    "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK QM00001 \" from "
    "PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0)\r\n"
    "BdsDxe: starting Boot0001 \"UEFI QEMU HARDDISK QM00001 \" from "
    "PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0)\r\nWelcome to GRUB!\r\n")
OVMF_SHELL = (
    "BdsDxe: failed to load Boot0001 \"UEFI QEMU HARDDISK QM00001 \" from "
    "PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0): Not Found\r\n"
    "BdsDxe: loading Boot0002 \"EFI Internal Shell\" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n"
    "BdsDxe: starting Boot0002 \"EFI Internal Shell\" from Fv(7CB8BDC9)/FvFile(7C04A583)\r\n")


def test_uefi_boot_of_the_ahci_disk_is_a_hand_off():
    view = read_uefi_console(OVMF_BOOTS)
    assert view.handed_off and not view.gave_up and view.stopped() is None
    assert view.ahci_disks == (("UEFI QEMU HARDDISK QM00001 at "
                               "PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x0,0xFFFF,0x0)"),)


def test_uefi_firmware_that_moves_on_to_the_shell_did_not_boot_the_disk():
    view = read_uefi_console(OVMF_SHELL)
    assert not view.handed_off and view.gave_up
    reason = view.stopped()
    assert reason is not None and "failed to load 'UEFI QEMU HARDDISK QM00001'" in reason
    assert "it started 'EFI Internal Shell'" in reason
    assert read_uefi_console("BdsDxe: No bootable option or device was found.\r\n").gave_up
    assert not read_uefi_console("").gave_up


def test_the_seabios_ahci_timeout_is_a_stall():
    log = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\nAHCI controller at 00:1f.2\n"
           "WARNING - Timeout at ahci_command:153!\n"
           "AHCI/0: registering: \"AHCI/0: QEMU HARDDISK ATA-7 Hard-Disk (97 MiBytes)\"\n")
    assert read_firmware_log(log).stalls == ("WARNING - Timeout at ahci_command:153!",)
    assert read_firmware_log(log.replace("WARNING - Timeout", "Timeout")).stalls == ()


# ---- the known gap keyed by both versions

def test_the_stall_gap_holds_only_for_new_qemu_with_old_seabios():
    assert parse_firmware_version("rel-1.16.3-0-g1") == (1, 16, 3)
    assert parse_firmware_version("no digits") is None
    [gap] = gaps_for_firmware((10, 0), "seabios", "1.16.2-debian-1.16.2-1")
    assert gap.id == "ahci-tfes-only-seabios-stall"
    assert gaps_for_firmware((10, 0), "seabios", "1.16.3-debian-1.16.3-2~bpo12+1") == []
    assert gaps_for_firmware((7, 2), "seabios", "1.16.2-debian-1.16.2-1") == []
    assert gaps_for_firmware((10, 0), "ovmf", "2022.11-6+deb12u2") == []
    assert gaps_for_firmware((10, 0), "seabios", None) == []     # no version: not claimed
    assert not gap.holds((10, 0), None, None)                    # firmware unknown
    assert "with seabios before 1.16.3" in gap.scope(), gap.scope()


def _gap(*evidence: Measurement) -> KnownGap:
    return KnownGap(id="g", seed="ahci-stability", does_instead="x", spec="y",
                    versions=VersionRange((10, 0)), tests=("test_x",), evidence=evidence,
                    firmware=FirmwareRange("seabios", fixed=(1, 16, 3)))


def test_firmware_keyed_evidence_is_checked_on_both_axes():
    good = (Measurement("7.2.22", PASSES, ("q35",), firmware="seabios 1.16.2"),
            Measurement("10.0.2", FAILS, ("q35",), firmware="seabios 1.16.2"),
            Measurement("10.0.2", PASSES, ("q35",), firmware="seabios 1.16.3"))
    assert evidence_problems(_gap(*good)) == []
    # Measured passing with the old SeaBIOS on a QEMU inside the range: contradicts
    # the failing one, and lies inside both ranges.
    assert evidence_problems(_gap(good[0], good[1],
                                  Measurement("10.0.2", PASSES, ("q35",),
                                              firmware="seabios 1.16.2"))) == [
        ("g: measurement 10.0.2 with seabios 1.16.2 both fails and passes on q35: the "
        "evidence contradicts itself"),
        ("g: measurement 10.0.2 with seabios 1.16.2 passes on q35, inside QEMU 10.0 and "
        "later, with seabios before 1.16.3"),
        "g: open-ended, but the newest measurement 10.0.2 passes"]
    # Failing with the fixed SeaBIOS: outside the firmware range; none left to draw from.
    assert evidence_problems(_gap(Measurement("10.0.2", FAILS, ("q35",),
                                              firmware="seabios 1.16.3"))) == [
        ("g: measurement 10.0.2 with seabios 1.16.3 fails on q35, outside QEMU 10.0 and "
        "later, with seabios before 1.16.3"),
        "g: no measurement shows the gap"]
    assert "g: the measurement on 10.0.2 names no firmware" in evidence_problems(
        _gap(Measurement("10.0.2", FAILS, ("q35",))))


# ---- the UEFI loader's configuration

def test_grub_cfg_carries_syslinux_kernel_line_and_the_markers():
    recipe = Path(__file__).parents[2] / "guest-images" / "debian12-ahci" / "syslinux.cfg"
    entry = syslinux_entry(recipe.read_text())
    assert entry["LINUX"] == "/vmlinuz" and entry["INITRD"] == "/initrd.img"
    cfg = grub_cfg(entry)
    assert f"linux /vmlinuz {entry['APPEND']}\n" in cfg and "harness.root=/dev/sda2" in cfg
    lines = cfg.splitlines()
    assert lines.index(f"echo {GRUB_STARTED}") < lines.index("initrd /initrd.img") \
        < lines.index(f"echo {GRUB_LOADED}") < lines.index("boot")
    with pytest.raises(Exception, match="no INITRD"):
        syslinux_entry("LABEL x\n  LINUX /vmlinuz\n  APPEND console=ttyS0\n")
