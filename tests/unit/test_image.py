"""Guest image builder pieces that need no network: ELF parsing, vmlinux extraction."""

import lzma
import shutil
import struct
import sys
from pathlib import Path

import pytest

from harness.errors import ImageBuildError
from harness.guest import image


def test_extract_vmlinux_finds_the_xz_stream():
    elf = b"\x7fELF" + bytes(range(256)) * 64
    packed = lzma.compress(elf, format=lzma.FORMAT_XZ)
    bz = b"MZ" + b"\0" * 1000 + packed + b"\0" * 100  # trailing padding as in a bzImage
    assert image.extract_vmlinux(bz) == elf


def test_extract_vmlinux_rejects_non_xz_kernels():
    with pytest.raises(ImageBuildError, match="no xz stream"):
        image.extract_vmlinux(b"MZ" + b"\0" * 100)


def test_elf_needed_matches_readelf():
    exe = Path(sys.executable).resolve()
    needed = image._elf_needed(exe.read_bytes())
    if shutil.which("readelf"):
        import subprocess
        out = subprocess.run(["readelf", "-d", str(exe)], capture_output=True, text=True,
                             check=False).stdout
        expected = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines()
                    if "(NEEDED)" in line]
        assert needed == expected
    else:
        assert "libc.so.6" in needed


def _fake_ko(path: Path, modinfo: bytes) -> None:
    """A minimal ELF64 with a .modinfo section, enough for _modinfo()."""
    shstr = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    shstr_off = data_off + len(modinfo)
    sh_off = shstr_off + len(shstr)
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    struct.pack_into("<Q", header, 0x28, sh_off)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, data_off, len(modinfo), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(header) + modinfo + shstr + b"".join(sections))


def test_module_closure_follows_depends_and_softdeps(tmp_path):
    moddir = tmp_path / "6.1"
    _fake_ko(moddir / "kernel/a.ko", b"depends=b,c\0softdep=pre: d crypto-alias\0")
    _fake_ko(moddir / "kernel/b.ko", b"depends=\0")
    _fake_ko(moddir / "kernel/c.ko", b"depends=b\0")
    _fake_ko(moddir / "kernel/d.ko", b"depends=\0")
    _fake_ko(moddir / "kernel/unused.ko", b"depends=\0")
    (moddir / "modules.builtin").write_text("kernel/builtin_one.ko\n")
    got = {p.name for p in image._module_closure(moddir, ["a", "builtin-one"])}
    assert got == {"a.ko", "b.ko", "c.ko", "d.ko"}


def test_install_modules_copies_the_closure_and_the_indexes(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "root"
    moddir = staging / "lib/modules/6.1"
    _fake_ko(moddir / "kernel/a.ko", b"depends=b\0")
    _fake_ko(moddir / "kernel/b.ko", b"depends=\0")
    _fake_ko(moddir / "kernel/unused.ko", b"depends=\0")
    (moddir / "modules.builtin").write_text("")
    (moddir / "modules.order").write_text("kernel/a.ko\n")
    copied = image.install_modules(staging, root, "6.1", ["a"])
    assert sorted(p.name for p in copied) == ["a.ko", "b.ko"]
    landed = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert landed == ["lib/modules/6.1/kernel/a.ko", "lib/modules/6.1/kernel/b.ko",
                      "lib/modules/6.1/modules.builtin", "lib/modules/6.1/modules.order"]


def test_module_closure_names_a_missing_module(tmp_path):
    moddir = tmp_path / "6.1"
    _fake_ko(moddir / "kernel/a.ko", b"depends=\0")
    (moddir / "modules.builtin").write_text("")
    with pytest.raises(ImageBuildError, match="kernel module nope is neither"):
        image._module_closure(moddir, ["nope"])


def test_image_key_changes_with_recipe_and_versions(tmp_path):
    (tmp_path / "recipe.toml").write_text("a = 1\n")
    (tmp_path / "init.sh").write_text("#!/bin/sh\n")
    k1 = image.image_key(tmp_path, {"linux-image-6.1.0-1-amd64": "6.1.1"})
    k2 = image.image_key(tmp_path, {"linux-image-6.1.0-2-amd64": "6.1.2"})
    (tmp_path / "init.sh").write_text("#!/bin/sh\necho\n")
    k3 = image.image_key(tmp_path, {"linux-image-6.1.0-1-amd64": "6.1.1"})
    assert len({k1, k2, k3}) == 3


def test_image_key_covers_the_shared_services_script(tmp_path):
    """guest-images/common/services.sh is part of every flavour's /init."""
    recipe = tmp_path / "flavour"
    recipe.mkdir()
    (recipe / "recipe.toml").write_text("a = 1\n")
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "services.sh").write_text("dropbear\n")
    before = image.image_key(recipe, {})
    (tmp_path / "common" / "services.sh").write_text("dropbear -s\n")
    assert image.image_key(recipe, {}) != before


def test_every_flavour_sources_the_shared_services_once():
    from harness.paths import guest_images_root

    root = guest_images_root()
    assert (root / "common" / "services.sh").is_file()
    for init in ("debian12/init.sh", "debian12-ahci/init.sh"):
        lines = (root / init).read_text().splitlines()
        assert lines.count(". /etc/harness-services.sh") == 1, init
        assert not any(line.startswith("dropbear") for line in lines), init


def test_the_ahci_root_disk_is_keyed_by_its_builders_source(tmp_path, monkeypatch):
    """A change to harness/guest/diskimage.py builds a new disk instead of reusing a
    stale one (the key had only the recipe, the versions and BUILDER_VERSION)."""
    from harness.guest import diskimage

    (tmp_path / "recipe.toml").write_text("kind = 'ahci-root'\n")
    plain = image.image_key(tmp_path, {})
    source = Path(diskimage.__file__).read_bytes()
    keyed = image.image_key(tmp_path, {}, source)
    changed = image.image_key(tmp_path, {}, source + b"\n# one more line\n")
    assert len({plain, keyed, changed}) == 3, (plain, keyed, changed)
    assert image.image_key(tmp_path, {}, source) == keyed   # stable
    # ...and the AHCI-root build passes exactly that source.
    seen = {}

    def fake_ensure_built(name, progress=None, builder=None, builder_source=b""):
        seen["source"] = builder_source
        raise RuntimeError("stop here")

    monkeypatch.setattr(diskimage, "ensure_built", fake_ensure_built)
    monkeypatch.setattr(diskimage, "_memo", {})
    with pytest.raises(RuntimeError, match="stop here"):
        diskimage.ensure_disk_image("debian12-ahci")
    assert seen["source"] == source
