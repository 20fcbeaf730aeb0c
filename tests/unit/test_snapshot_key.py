"""The snapshot key changes with everything that makes a different machine."""

import dataclasses
from pathlib import Path

from harness.guest.image import GuestImage
from harness.guest.running import LaunchPlan, render_plan
from harness.qemu.accel import Accel
from harness.qemu.binary import QemuBinary
from harness.snapshot import snapshot_key as key_of
from harness.topology import default_topology, topology_from_dict


class FakeBinary(QemuBinary):
    def identity(self) -> str:
        return f"{self.path}:{self.version}"


def _plan(**changes):
    plan = LaunchPlan(
        binary=FakeBinary(Path("/usr/bin/qemu-system-x86_64"), "7.2.22", "QEMU 7.2.22",
                          frozenset({"pc", "q35"})),
        accel=Accel("tcg", "test"),
        image=GuestImage("img1", Path("/x"), Path("/x/vmlinux"), Path("/x/initrd"), "6.1"),
        topology=default_topology("q35"))
    return dataclasses.replace(plan, **changes)


def snapshot_key(plan: LaunchPlan, n: int = 0) -> str:
    """The key of one guest of PLAN (guest n: its own scratch directory, MAC, run dir)."""
    rendered = render_plan(plan, Path(f"/scratch{n}"), f"52:54:00:00:00:0{n}", Path(f"/run{n}"))
    return key_of(plan, rendered)


def test_same_plan_same_key():
    assert snapshot_key(_plan()) == snapshot_key(_plan())
    # Every guest of the same machine shares the snapshot: its scratch directory,
    # MAC and private sockets are tokens in the key.
    assert snapshot_key(_plan(), 1) == snapshot_key(_plan(), 2)
    hop = _plan(migrating_ssh=True)
    assert snapshot_key(hop, 1) == snapshot_key(hop, 2)


def test_key_changes_with_every_machine_defining_input():
    base = snapshot_key(_plan())
    variants = {
        "binary": _plan(binary=FakeBinary(Path("/opt/qemu-9/bin/qemu-system-x86_64"), "9.0.0",
                                          "QEMU 9.0.0", frozenset({"pc", "q35"}))),
        "accel": _plan(accel=Accel("kvm", "test")),
        "image": _plan(image=GuestImage("img2", Path("/y"), Path("/y/vmlinux"),
                                        Path("/y/initrd"), "6.1")),
        "machine": _plan(topology=default_topology("pc")),
        "devices": _plan(topology=topology_from_dict({"machine": "q35", "device": [
            {"id": "rp1", "driver": "pcie-root-port", "chassis": 1}]})),
        "kernel_args": _plan(kernel_args=("pci=nomsi",)),
        "extra_args": _plan(extra_args=("-global", "ICH9-LPC.disable_s3=1")),
        "memory": _plan(memory="1G"),
        "firmware": _plan(firmware="qboot"),
        "migrating_ssh": _plan(migrating_ssh=True),
        "firmware_log": _plan(firmware_log=True),  # adds a debugcon device
    }
    keys = {name: snapshot_key(plan) for name, plan in variants.items()}
    unchanged = [name for name, key in keys.items() if key == base]
    assert unchanged == [], f"snapshot key ignores {unchanged}"
    assert len(set(keys.values())) == len(keys)


def test_key_changes_when_the_driver_table_changes_what_a_topology_renders(monkeypatch):
    """Same topology, but the harness now loads another guest module for a driver
    (a snapshot saved before would lack it)."""
    from harness.qemu import drivers

    topology = topology_from_dict({"machine": "pc", "device": [
        {"id": "vga1", "driver": "VGA", "addr": "6.0"}]})
    before = snapshot_key(_plan(topology=topology))
    vga = drivers.driver_info("VGA")
    assert vga is not None
    changed = dataclasses.replace(vga, modules=("bochs", "drm_kms_helper"))
    original = drivers.driver_info
    import importlib

    render_module = importlib.import_module("harness.topology.render")
    monkeypatch.setattr(render_module, "driver_info",
                        lambda name: changed if name == "VGA" else original(name))
    assert snapshot_key(_plan(topology=topology)) != before
