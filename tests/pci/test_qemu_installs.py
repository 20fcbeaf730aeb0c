"""Any QEMU by path, for real: a build directory's binary (the system QEMU and
its modules copied into a fake meson build tree) is found, wired to its source
tree's firmware and its modules through a launcher, started and asked for its
QOM types; broken firmware there is a one-paragraph QemuNotFound, not a guest
that never boots."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import QemuNotFound
from harness.qemu import binary as qemu_binary
from harness.qemu.binary import find_qemu
from harness.qemu.install import OPTION_ROMS

pytestmark = pytest.mark.smoke  # two short QEMU starts, no guest

SYSTEM = Path("/usr/bin/qemu-system-x86_64")
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")


def _build_tree(root: Path, bios: Path | None) -> Path:
    source, build = root / "qemu", root / "qemu" / "build"
    (build / "meson-info").mkdir(parents=True)
    (source / "pc-bios").mkdir()
    (build / "build.ninja").write_text("")
    (build / "meson-info" / "meson-info.json").write_text(
        json.dumps({"directories": {"source": str(source), "build": str(build)}}))
    binary = build / "qemu-system-x86_64"
    shutil.copy2(SYSTEM, binary)  # a real file: a symlink would resolve to /usr/bin
    # A modules build keeps them next to the binary.  Moved out of /usr/bin, the
    # binary no longer finds /usr/lib/.../qemu (its module path is relative to
    # its own directory) and dies: "could not load module for type 'tcg-accel-ops'".
    for module in MODULES.glob("*.so"):
        shutil.copy2(module, build / module.name)
    for rom in OPTION_ROMS:  # a complete build has them (a Debian +ds tarball does not)
        (source / "pc-bios" / rom).symlink_to(Path("/usr/share/qemu") / rom)
    if bios is None:
        (source / "pc-bios" / "bios-256k.bin").write_bytes(b"")  # a broken build
    else:
        (source / "pc-bios" / "bios-256k.bin").symlink_to(bios)
    return binary


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PCI_HARNESS_CACHE", str(tmp_path / "cache"))
    qemu_binary._find.cache_clear()
    yield tmp_path / "cache"
    qemu_binary._find.cache_clear()


def test_a_build_directory_binary_runs_with_its_source_trees_firmware(tmp_path, private_cache):
    built = _build_tree(tmp_path / "t", SEABIOS)
    found = find_qemu(built)
    system = find_qemu(SYSTEM)
    assert (found.layout, found.given, found.version) == ("build", built, system.version)
    assert found.path.is_relative_to(private_cache / "qemu" / "launchers")
    launcher = found.path.read_text()
    assert f"-L {tmp_path}/t/qemu/pc-bios" in launcher
    assert f"QEMU_MODULE_DIR={tmp_path}/t/qemu/build\n" in launcher
    assert found.resolve_machine("q35") == system.resolve_machine("q35")
    # The launcher is what every launch point runs: it starts the build's binary.
    out = subprocess.run([str(found.path), "-version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[0] == system.full_version
    assert len(list((private_cache / "qemu" / "checked").iterdir())) == 1  # verdict cached


def test_a_build_directory_with_broken_firmware_is_refused_before_any_guest(tmp_path,
                                                                            private_cache):
    built = _build_tree(tmp_path / "t", None)
    with pytest.raises(QemuNotFound) as caught:
        find_qemu(built)
    text = caught.value.describe()
    assert f"QEMU {built} (build layout; firmware -L {tmp_path}/t/qemu/pc-bios" in text, text
    assert "does not find its firmware" in text and "could not load PC BIOS" in text, text
    assert not (private_cache / "qemu" / "checked").exists()  # a failure is never cached
