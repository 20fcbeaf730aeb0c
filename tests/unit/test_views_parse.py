"""QEMU-view and guest-view parsers, fed with real QEMU 7.2 recordings and this host's sysfs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.views import (
    GUEST_DUMP_SCRIPT,
    config_view,
    parse_guest_view,
    parse_qemu_view,
    sysfs_path,
)
from harness.views.configspace import decode
from harness.views.pciview import PciView

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(p for p in DATA.glob("*.json") if not p.name.startswith("where-"))


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def guest_dump_from_recording(rec: dict[str, Any], drivers: dict[str, str] | None = None) -> str:
    """Text in GUEST_DUMP_SCRIPT's format built from a QEMU recording's real config bytes."""
    lines: list[str] = []

    def walk(devs: list[dict[str, Any]], sys_path: str) -> None:
        for d in devs:
            bdf = f"0000:{d['bus']:02x}:{d['slot']:02x}.{d['function']}"
            path = f"{sys_path}/{bdf}"
            lines.append(f"@@ fn {bdf}")
            lines.append(f"sysfs {path}")
            lines.append(f"driver {(drivers or {}).get(d.get('qdev_id', ''), '')}")
            regions = {r["bar"]: r for r in d.get("regions", [])}
            for i in range(7):
                r = regions.get(i)
                if r is None:
                    lines.append("res 0x0 0x0 0x0")
                    continue
                flags = 0x100 if r["type"] == "io" else 0x200
                flags |= 0x2000 if r.get("prefetch") or i == 6 else 0
                flags |= 0x100000 if r.get("mem_type_64") else 0
                # A ROM QEMU shows unmapped (-1): Linux still sizes it and gives it space.
                start = 0xFEB00000 if r["address"] == -1 else r["address"]
                lines.append(f"res {start:#x} {start + r['size'] - 1:#x} {flags:#x}")
            lines.append(f"config {rec['config'][bdf[5:]]}")
            if "pci_bridge" in d:
                walk(d["pci_bridge"].get("devices", []), path)

    walk(rec["query-pci"][0]["devices"], "/sys/devices/pci0000:00")
    return "\n".join(lines + ["@@ end", "@@ lspci", "00:00.0 Host bridge [0600]: ignored"]) + "\n"


def test_qemu_view_nests_bridges_into_paths() -> None:
    view = parse_qemu_view(recording("q35-pcie-to-pci")["query-pci"],
                           recording("q35-pcie-to-pci")["qom"])
    nic = view.function("nic0")
    assert nic.path == ("02.0", "00.0", "01.0", "02.0")
    assert (nic.vendor, nic.device) == (0x8086, 0x100E)
    rom = next(b for b in nic.bars or () if b.index == 6)
    assert rom.address is None and rom.size == 256 * 1024  # query-pci says -1: not mapped
    ppb = view.function("ppb")
    assert ppb.header_type == 1 and ppb.bus_hotplug == "acpi-pcihp"
    assert ppb.secondary_bus is not None and ppb.subordinate_bus is not None
    assert ppb.secondary_bus < ppb.subordinate_bus  # pb1 is below it
    assert view.root_bus_hotplug == "none"


def test_qemu_view_empty_io_window_reads_off() -> None:
    view = parse_qemu_view(recording("q35-link-speeds")["query-pci"])
    # rp1 holds a modern virtio-blk: no I/O BAR below it, so no I/O window.
    assert view.function("rp1").io_window == "off"
    assert view.function("rp1").mem_window not in (None, "off")


def test_decode_pcie_port_capabilities() -> None:
    rec = recording("q35-link-speeds")
    facts = decode(bytes.fromhex(rec["config"]["00:02.0"]))
    assert facts.pcie_type == "root-port"
    assert (facts.link_cap_speed, facts.link_cap_width) == (8.0, 4)
    assert (facts.link_speed, facts.link_width) == (2.5, 1)
    assert facts.slot_hotplug_capable is True
    assert facts.capabilities == ("msix", "pcie", "ssvid")
    assert facts.msix_table_size == 1
    assert (facts.subsystem_vendor, facts.subsystem) == (0x1B36, 0)


def test_decode_short_config_has_no_capabilities() -> None:
    rec = recording("q35-link-speeds")
    facts = decode(bytes.fromhex(rec["config"]["00:02.0"])[:64])
    assert facts.capabilities is None and facts.pcie_type is None
    with pytest.raises(ValueError):
        decode(b"\0" * 10)


# q35-link-speeds (topologies/q35-link-speeds.toml), what the PCIe capability of
# each function must say, written from the topology and the PCIe rules, not
# decoded by the code under test: a port's LnkCap is its x-speed/x-width (default
# 16 GT/s x32 on 7.2), its LnkSta is the link of the endpoint behind it (virtio
# and e1000e train at 2.5 GT/s x1), an empty port shows its own maximum.
# (path): (pcie_type, LnkCap speed, width, LnkSta speed, width, capabilities, MSI-X entries)
LINK_SPEEDS_EXPECTED: dict[tuple[str, ...], tuple[Any, ...]] = {
    ("02.0",): ("root-port", 8.0, 4, 2.5, 1, ("msix", "pcie", "ssvid"), 1),
    ("02.0", "00.0"): ("endpoint", 2.5, 1, 2.5, 1, ("msix", "pcie", "pm", "vendor"), 2),
    ("03.0",): ("root-port", 5.0, 2, 2.5, 1, ("msix", "pcie", "ssvid"), 1),
    ("03.0", "00.0"): ("endpoint", 2.5, 1, 2.5, 1, ("msix", "pcie", "pm", "vendor"), 4),
    ("04.0",): ("root-port", 2.5, 1, 2.5, 1, ("msix", "pcie", "ssvid"), 1),
    ("04.0", "00.0"): ("endpoint", 2.5, 1, 2.5, 1, ("msi", "msix", "pcie", "pm"), 5),
    ("05.0",): ("root-port", 16.0, 16, 16.0, 16, ("msix", "pcie", "ssvid"), 1),
    ("06.0",): ("root-port", 16.0, 32, 2.5, 1, ("msix", "pcie", "ssvid"), 1),
    ("06.0", "00.0"): ("endpoint", 2.5, 1, 2.5, 1, ("msix", "pcie", "pm", "vendor"), 4),
    ("1e.0",): ("", None, None, None, None, ("msix", "vendor"), 4),  # virtio-net on pcie.0: no PCIe cap
    ("1f.2",): ("", None, None, None, None, ("msi", "sata"), None),  # ICH9 AHCI
}


def _link_facts(view: PciView) -> dict[tuple[str, ...], tuple[Any, ...]]:
    return {f.path: (f.pcie_type, f.link_cap_speed, f.link_cap_width, f.link_speed,
                     f.link_width, f.capabilities, f.msix_table_size)
            for f in view.functions if f.path in LINK_SPEEDS_EXPECTED}


def test_guest_parser_reads_link_and_capabilities_of_a_real_guest_dump() -> None:
    rec = json.loads((DATA / "guest" / "q35-link-speeds.json").read_text())
    got = _link_facts(parse_guest_view(rec["guest_dump"]))
    assert got == LINK_SPEEDS_EXPECTED


def test_config_view_decodes_link_and_capabilities_of_qemu_config_bytes() -> None:
    rec = recording("q35-link-speeds")
    got = _link_facts(config_view(rec["query-pci"], rec["config"]))
    assert got == LINK_SPEEDS_EXPECTED


@pytest.mark.parametrize("rec_path", RECORDINGS, ids=lambda p: p.stem)
def test_guest_parser_reads_bars_from_resource_lines(rec_path: Path) -> None:
    """The dump's `res` lines, written here from query-pci's regions with the
    kernel's IORESOURCE_* flag values, parse back to query-pci's BARs."""
    rec = json.loads(rec_path.read_text())
    guest = parse_guest_view(guest_dump_from_recording(rec)).by_path()
    wanted: dict[tuple[str, ...], list[tuple[int, str, int, int | None]]] = {}

    def walk(devs: list[dict[str, Any]], parent: tuple[str, ...]) -> None:
        for d in devs:
            path = (*parent, f"{d['slot']:02x}.{d['function']}")
            wanted[path] = [(r["bar"], "io" if r["type"] == "io" else "mem", r["size"],
                             None if r["address"] == -1 else r["address"])
                            for r in sorted(d.get("regions", []), key=lambda r: r["bar"])]
            walk(d.get("pci_bridge", {}).get("devices", []), path)

    walk(rec["query-pci"][0]["devices"], ())
    assert sorted(guest) == sorted(wanted)
    for path, bars in wanted.items():
        got = [(b.index, b.kind, b.size, b.address) for b in guest[path].bars or ()]
        # A ROM QEMU shows unmapped (-1) gets space from Linux: only its size is known.
        got = [(i, k, sz, None if i == 6 and w is None else a)
               for (i, k, sz, a), (_, _, _, w) in zip(got, bars, strict=False)] + got[len(bars):]
        assert got == bars, path


def test_sysfs_path_walks_the_bridge_chain() -> None:
    assert sysfs_path("/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0") == ("02.0", "00.0")
    assert sysfs_path("/sys/devices/pci0000:00/0000:00:1f.2") == ("1f.2",)


def test_guest_parser_on_recorded_host_sysfs() -> None:
    view = parse_guest_view((DATA / "host-sysfs-dump.txt").read_text())
    assert len(view.functions) >= 2
    virtio = [f for f in view.functions if f.vendor == 0x1AF4]
    assert virtio and all(f.driver == "virtio-pci" for f in virtio)
    assert all("msix" in (f.capabilities or ()) for f in virtio)


@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(), reason="no PCI sysfs here")
def test_guest_script_runs_under_posix_sh_on_this_host() -> None:
    out = subprocess.run(["sh", "-c", GUEST_DUMP_SCRIPT], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    view = parse_guest_view(out)
    assert len(view.functions) == len(list(Path("/sys/bus/pci/devices").iterdir()))


def test_view_json_round_trip() -> None:
    rec = recording("q35-pcie-to-pci")
    view = parse_qemu_view(rec["query-pci"], rec["qom"])
    assert PciView.from_json(view.to_json()) == view
    guest = parse_guest_view(guest_dump_from_recording(rec))
    assert PciView.from_json(guest.to_json()) == guest


def test_config_section_is_matched_to_functions_by_name():
    from harness.views import GuestDumpError, parse_guest_view

    host = "86 80 c0 29 " + "00 " * 252
    isa = "86 80 18 29 " + "00 " * 252
    dump = ("@@ fn 0000:00:00.0\nsysfs /sys/devices/pci0000:00/0000:00:00.0\ndriver \n"
            "@@ fn 0000:00:1f.0\nsysfs /sys/devices/pci0000:00/0000:00:1f.0\ndriver lpc_ich\n"
            f"@@ configs 0000:00:00.0 0000:00:1f.0\n {host}\n {isa}\n@@ end\n")
    view = parse_guest_view(dump)
    assert [(f.path, f.device) for f in view.functions] == [(("00.0",), 0x29C0),
                                                           (("1f.0",), 0x2918)]
    assert view.function("1f.0").driver == "lpc_ich"
    short = dump.replace(f" {isa}\n", "")
    try:
        parse_guest_view(short)
    except GuestDumpError as exc:
        assert "1 lines for 2 functions" in exc.message
    else:
        raise AssertionError("a config section one line short was accepted")
