"""render(): the one place that writes QEMU arguments."""

from __future__ import annotations

from pathlib import Path

from harness.topology import default_topology, load_topology, render, topology_from_dict

TOPOLOGIES = sorted((Path(__file__).parents[2] / "topologies").glob("*.toml"))
MAC = "52:54:00:aa:bb:cc"
FORBIDDEN = ("-accel", "-kernel", "-append", "-serial", "-chardev", "-qmp", "-nodefaults",
             "-display", "-enable-kvm")


def devices(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_machine_memory_and_mgmt(tmp_path: Path) -> None:
    r = render(default_topology("pc"), scratch_dir=tmp_path, mgmt_mac=MAC)
    assert r.argv[:4] == ("-machine", "pc", "-m", "512M")
    assert "user,id=mgmt,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:0-:22" in r.argv
    # romfile= (empty): no iPXE option ROM for SeaBIOS to run at every boot.
    assert devices(r.argv)[-1] == (f"virtio-net-pci,id=mgmt,netdev=mgmt,mac={MAC},bus=pci.0,"
                                   "addr=0x1e,romfile=")
    assert not set(FORBIDDEN) & set(r.argv)


def test_virtio_blk_disk_uses_blockdev(tmp_path: Path) -> None:
    r = render(default_topology("q35"), scratch_dir=tmp_path, mgmt_mac=MAC)
    (disk,) = r.scratch_disks
    assert disk.path == tmp_path / "disk1.qcow2" and disk.size_bytes == 64 << 20
    assert disk.node_name == "disk1.disk"
    i = r.argv.index("-blockdev")
    assert r.argv[i + 1] == (f"driver=qcow2,node-name=disk1.disk,file.driver=file,"
                             f"file.filename={tmp_path}/disk1.qcow2")
    assert "virtio-blk-pci,id=disk1,bus=pcie.0,addr=0x1.0,drive=disk1.disk" in devices(r.argv)
    assert i < r.argv.index("virtio-blk-pci,id=disk1,bus=pcie.0,addr=0x1.0,drive=disk1.disk")


def test_controller_disks_and_builtin_ahci(tmp_path: Path) -> None:
    t = topology_from_dict({"machine": "q35", "ahci_disk": "8M", "device": [
        {"id": "sata1", "driver": "ich9-ahci", "disk": "16M"},
        {"id": "scsi1", "driver": "virtio-scsi-pci", "disk": "16M"}]})
    r = render(t, scratch_dir=tmp_path, mgmt_mac=MAC)
    devs = devices(r.argv)
    assert "ide-hd,id=sata1.hd,bus=sata1.0,drive=sata1.disk" in devs
    assert "scsi-hd,id=scsi1.hd,bus=scsi1.0,channel=0,scsi-id=0,lun=0,drive=scsi1.disk" in devs
    assert "ide-hd,id=ahci.hd,bus=ide.0,drive=ahci.disk" in devs
    assert [d.node_name for d in r.scratch_disks] == ["sata1.disk", "scsi1.disk", "ahci.disk"]
    assert {"ahci", "sd_mod", "virtio_scsi"} <= set(r.guest_modules)


def test_guest_modules(tmp_path: Path) -> None:
    t = topology_from_dict({"machine": "pc", "device": [
        {"id": "n1", "driver": "e1000e"}, {"id": "n2", "driver": "e1000"},
        {"id": "v", "driver": "bochs-display"}]})
    mods = render(t, scratch_dir=tmp_path, mgmt_mac=MAC).guest_modules
    assert mods[:3] == ("qemu_fw_cfg", "virtio_pci", "virtio_net")
    assert {"e1000e", "e1000", "bochs"} <= set(mods)
    assert len(mods) == len(set(mods))


def test_bridges_come_before_their_devices(tmp_path: Path) -> None:
    t = topology_from_dict({"machine": "q35", "device": [
        {"id": "n", "driver": "e1000", "bus": "pb"},
        {"id": "pb", "driver": "pci-bridge", "bus": "ppb"},
        {"id": "ppb", "driver": "pcie-pci-bridge", "bus": "rp"},
        {"id": "rp", "driver": "pcie-root-port"}]})
    ids = [d.split(",")[1] for d in devices(render(t, scratch_dir=tmp_path,
                                                   mgmt_mac=MAC).argv)]
    assert ids[:4] == ["id=rp", "id=ppb", "id=pb", "id=n"]


def test_properties_pass_through_and_escape(tmp_path: Path) -> None:
    t = topology_from_dict({"machine": "q35", "device": [
        {"id": "rp", "driver": "pcie-root-port", "x-speed": "8", "x-width": 4,
         "hotplug": False, "chassis": 7},
        {"id": "n", "driver": "e1000", "romfile": "a,b"}]})
    devs = devices(render(t, scratch_dir=tmp_path, mgmt_mac=MAC).argv)
    assert devs[0] == "pcie-root-port,id=rp,bus=pcie.0,addr=0x1.0,x-speed=8,x-width=4," \
                      "hotplug=off,chassis=7"
    assert "romfile=a,,b" in devs[1]


def test_acpi_hotplug_off_adds_a_global(tmp_path: Path) -> None:
    for machine, glob in (("q35", "ICH9-LPC"), ("pc", "PIIX4_PM")):
        t = topology_from_dict({"machine": machine, "acpi_hotplug": False})
        argv = render(t, scratch_dir=tmp_path, mgmt_mac=MAC).argv
        assert argv[argv.index("-global") + 1] == \
            f"{glob}.acpi-pci-hotplug-with-bridge-support=off"


def test_every_example_renders_with_explicit_addresses(tmp_path: Path) -> None:
    """All examples were also started with real QEMU (tests/unit/data/*.json record it)."""
    for path in TOPOLOGIES:
        argv = render(load_topology(path), scratch_dir=tmp_path, mgmt_mac=MAC).argv
        pci = [d for d in devices(argv) if not d.startswith(("ide-hd", "scsi-hd"))]
        assert all(",addr=" in d for d in pci), path
        recorded = Path(__file__).parent / "data" / f"{path.stem}.json"
        assert recorded.exists(), f"record {path.name} with tests/unit/data/record_qemu.py"


def test_everything_else_on_the_command_line_is_an_input(tmp_path: Path) -> None:
    """Render once: the migrating SSH forward, memory override and dump-guest-core
    are inputs, so the argv holds exactly one -machine, -m and -netdev."""
    from harness.topology.render import RenderInputs

    inputs = RenderInputs(scratch_dir=tmp_path, mgmt_mac=MAC,
                          mgmt_netdev_options=("guestfwd=tcp:10.0.2.100:2222-unix:/r/hop",),
                          memory="1G", dump_guest_core=False, private_paths=("/r/hop",))
    r = render(default_topology("q35"), inputs)
    argv = list(r.argv)
    assert [argv.count(o) for o in ("-machine", "-m", "-netdev")] == [1, 1, 1], argv
    assert argv[argv.index("-machine") + 1] == "q35,dump-guest-core=off"
    assert argv[argv.index("-m") + 1] == "1G"
    assert argv[argv.index("-netdev") + 1].endswith(",guestfwd=tcp:10.0.2.100:2222-unix:/r/hop")
    assert r.inputs == inputs


def test_the_result_carries_the_model_and_the_resolved_topology(tmp_path: Path) -> None:
    from harness.topology import expected_view

    t = topology_from_dict({"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port"},
        {"id": "d1", "driver": "virtio-blk-pci", "bus": "rp1", "disk": "16M"}]})
    r = render(t, scratch_dir=tmp_path, mgmt_mac=MAC)
    assert all(d.addr is not None for d in r.topology.devices)  # resolved once, here
    assert r.expected == expected_view(t)  # the same rules as the stand-alone model
    assert r.expected.function("d1").device == 0x1042  # modern-only behind the port


def test_key_material_hides_only_the_per_guest_parts(tmp_path: Path) -> None:
    a = render(default_topology("q35"), scratch_dir=tmp_path / "a", mgmt_mac=MAC)
    b = render(default_topology("q35"), scratch_dir=tmp_path / "b", mgmt_mac="52:54:00:11:22:33")
    assert a.argv != b.argv and a.key_material == b.key_material
    assert not any(str(tmp_path) in x or MAC in x for x in a.key_material), a.key_material
    c = render(default_topology("pc"), scratch_dir=tmp_path / "a", mgmt_mac=MAC)
    assert c.key_material != a.key_material
