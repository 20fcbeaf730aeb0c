"""Any QEMU by path: layouts of unpacked prefixes and build trees (fake trees,
no QEMU started), the launcher, and the words for a QEMU that fails to start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import QemuNotFound
from harness.qemu import install
from harness.qemu.binary import QemuBinary, firmware_missing_error, missing_firmware, start_failure

ELF = b"\x7fELF fake"


def _file(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _prefix(root: Path, modules: bool = True, seabios: bool = True) -> Path:
    binary = _file(root / "usr" / "bin" / "qemu-system-x86_64", ELF)
    _file(root / "usr" / "share" / "qemu" / "pvh.bin")
    if seabios:
        _file(root / "usr" / "share" / "seabios" / "bios-256k.bin")
    if modules:
        _file(root / "usr" / "lib" / "x86_64-linux-gnu" / "qemu" / "hw-display-qxl.so")
    return binary


def test_a_debian_package_unpacked_under_a_prefix(tmp_path):
    binary = _prefix(tmp_path / "bpo")
    found = install.detect(binary)
    usr = tmp_path / "bpo" / "usr"
    assert found == install.Layout("prefix", binary, (usr / "share/qemu", usr / "share/seabios"),
                                  usr / "lib/x86_64-linux-gnu/qemu")
    assert found.needs_launcher


def test_a_prefix_without_modules_gets_no_module_dir(tmp_path):
    binary = _prefix(tmp_path / "p", modules=False, seabios=False)
    (tmp_path / "p" / "usr" / "lib" / "x86_64-linux-gnu" / "qemu").mkdir(parents=True)
    found = install.detect(binary)
    assert (found.kind, found.module_dir) == ("prefix", None)
    assert found.firmware_dirs == (tmp_path / "p" / "usr" / "share" / "qemu",)


def test_make_install_prefix_layout(tmp_path):
    binary = _file(tmp_path / "opt" / "bin" / "qemu-system-x86_64", ELF)
    _file(tmp_path / "opt" / "share" / "qemu" / "bios-256k.bin")
    _file(tmp_path / "opt" / "lib64" / "qemu" / "ui-gtk.so")
    found = install.detect(binary)
    assert found.firmware_dirs == (tmp_path / "opt" / "share" / "qemu",)
    assert found.module_dir == tmp_path / "opt" / "lib64" / "qemu"


def test_the_system_binary_is_installed_and_needs_nothing():
    system = Path("/usr/bin/qemu-system-x86_64")
    assert install.detect(system) == install.Layout("installed", system)


def test_a_lone_binary_and_a_wrapper_script_run_as_given(tmp_path):
    lone = _file(tmp_path / "somewhere" / "qemu-system-x86_64", ELF)
    assert install.detect(lone).kind == "as-given"
    script = _file(tmp_path / "bin" / "qemu-system-x86_64", b"#!/bin/sh\nexec qemu \"$@\"\n")
    _file(tmp_path / "share" / "qemu" / "bios-256k.bin")
    assert install.detect(script) == install.Layout("as-given", script)


def _build_tree(root: Path, firmware_in: str | None, meson_info: bool = True,
                roms: tuple[str, ...] = install.OPTION_ROMS) -> Path:
    source, build = root / "qemu", root / "qemu" / "build"
    _file(source / "configure", b"#!/bin/sh\n")
    binary = _file(build / "qemu-system-x86_64", ELF)
    _file(build / "build.ninja")
    _file(build / "hw-usb-host.so")
    if meson_info:
        _file(build / "meson-info" / "meson-info.json",
              json.dumps({"directories": {"source": str(source), "build": str(build)}}).encode())
    if firmware_in is not None:
        pc_bios = (source if firmware_in == "source" else build) / "pc-bios"
        for name in ("bios-256k.bin", *roms):
            _file(pc_bios / name)
    return binary


def test_a_build_directory_uses_the_source_trees_firmware_and_its_own_modules(tmp_path):
    binary = _build_tree(tmp_path, "source")
    found = install.detect(binary)
    assert found == install.Layout("build", binary, (tmp_path / "qemu" / "pc-bios",),
                                  tmp_path / "qemu" / "build")


def test_a_build_directorys_own_pc_bios_comes_first(tmp_path):
    binary = _build_tree(tmp_path, "build", meson_info=False)
    _file(tmp_path / "qemu" / "pc-bios" / "bios-256k.bin")
    assert install.detect(binary).firmware_dirs == (tmp_path / "qemu" / "build" / "pc-bios",)


def test_a_build_directory_without_firmware_says_which_L_it_needs(tmp_path):
    binary = _build_tree(tmp_path, None)
    with pytest.raises(QemuNotFound) as caught:
        install.detect(binary)
    text = caught.value.describe()
    assert f"searched {tmp_path}/qemu/build/pc-bios, {tmp_path}/qemu/pc-bios" in text, text
    assert "-L DIR" in text and "bios-256k.bin" in text


def test_a_build_tree_without_its_option_roms_is_named_at_once(tmp_path, monkeypatch):
    # A Debian +ds tarball: SeaBIOS put back, pvh.bin and kvmvapic.bin still missing.
    monkeypatch.setattr(install, "DEFAULT_DATADIR", tmp_path / "usr-local-share-qemu")
    binary = _build_tree(tmp_path, "source", roms=("linuxboot_dma.bin",))
    with pytest.raises(QemuNotFound) as caught:
        install.detect(binary)
    text = caught.value.describe()
    assert f"{tmp_path}/qemu/pc-bios lacks the option ROMs pvh.bin, kvmvapic.bin" in text, text
    assert "+ds" in text and "qemu-system-data" in text, text
    # With them there it is a plain build layout again.
    for rom in ("pvh.bin", "kvmvapic.bin"):
        _file(tmp_path / "qemu" / "pc-bios" / rom)
    assert install.detect(binary).kind == "build"


def test_launcher_sets_module_dir_and_firmware_and_passes_arguments(tmp_path):
    binary = _prefix(tmp_path / "with space")
    found = install.detect(binary)
    path = install.write_launcher(found, tmp_path / "l" / "qemu-system-x86_64", "test")
    text = path.read_text()
    assert path.stat().st_mode & 0o111
    assert f"QEMU_MODULE_DIR='{tmp_path}/with space/usr/lib/x86_64-linux-gnu/qemu'" in text
    assert text.splitlines()[-1] == (
        f"exec '{binary}' -L '{tmp_path}/with space/usr/share/qemu' "
        f"-L '{tmp_path}/with space/usr/share/seabios' \"$@\"")
    before = path.stat().st_mtime_ns
    install.write_launcher(found, path, "test")
    assert path.stat().st_mtime_ns == before  # unchanged: caches keyed on it stay valid


def test_cached_launcher_lives_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PCI_HARNESS_CACHE", str(tmp_path / "cache"))
    path = install.cached_launcher(install.detect(_prefix(tmp_path / "p")))
    assert path.is_relative_to(tmp_path / "cache" / "qemu" / "launchers")


def test_identity_follows_the_real_binary_behind_a_launcher(tmp_path):
    launcher = _file(tmp_path / "launcher", b"#!/bin/sh\n")
    real = _file(tmp_path / "real", ELF)
    binary = QemuBinary(launcher, "10.0.2", "QEMU 10.0.2", frozenset(), given=real)
    before = binary.identity()
    real.write_bytes(ELF + b" rebuilt")
    assert binary.identity() != before
    assert binary.real_path == real
    plain = QemuBinary(real, "10.0.2", "QEMU 10.0.2", frozenset())
    assert plain.identity().count("|") == 0 and plain.real_path == real


# What QEMU and the loader print (captured on this machine).
MODULE_ABORT = """\
failed to open module: /usr/lib/x86_64-linux-gnu/qemu/hw-usb-host.so: undefined symbol: device_class_set_props
failed to initialize module: /usr/lib/x86_64-linux-gnu/qemu/chardev-baum.so
Only modules from the same build can be loaded.
qemu-system-x86_64: util/module.c:165: module_load_dso: Assertion `QTAILQ_EMPTY(&dso_init_list)' failed.
"""
GLIBC = ("/q/qemu-system-x86_64: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' "
         "not found (required by /q/qemu-system-x86_64)\n")
LIBRARY = ("/q/qemu-system-x86_64: error while loading shared libraries: libfdt.so.2: "
           "cannot open shared object file: No such file or directory\n")
BIOS = "qemu-system-x86_64: could not load PC BIOS 'bios-256k.bin'\n"


@pytest.mark.parametrize("stderr,expected", [
    (MODULE_ABORT, ("loaded a QEMU module of another build "
                    "(/usr/lib/x86_64-linux-gnu/qemu/chardev-baum.so) and aborted")),
    (GLIBC, "needs glibc 2.38 or newer"),
    (LIBRARY, "needs the library libfdt.so.2, which this host lacks"),
    (BIOS, "does not find its firmware (qemu-system-x86_64: could not load PC BIOS"),
    ("something else\n", "did not start and answer qom-list-types (something else)"),
    ("", "did not start and answer qom-list-types (exit status 1, no output)"),
])
def test_start_failures_say_why(stderr, expected):
    error = start_failure("QEMU X", 1 if not stderr else -6, stderr)
    assert expected in error.message, error.message
    assert error.fix


def test_an_empty_qemu_path_is_refused_not_replaced_by_the_default():
    from harness.qemu.binary import find_qemu

    for empty in ("", " "):
        with pytest.raises(QemuNotFound, match="the QEMU path given is empty"):
            find_qemu(empty)


@pytest.mark.parametrize("stderr, files", [
    # QEMU 7.2.22 with its data directory lacking the option ROMs (measured).
    (("Could not open option rom 'kvmvapic.bin': No such file or directory\n"
     "Could not open option rom 'pvh.bin': No such file or directory\n"),
     ["kvmvapic.bin", "pvh.bin"]),
    # A 10.x build tree without its option ROMs (issue 23).
    ("qemu-system-x86_64: warning: ...\nrom: file pvh.bin: error Failed to open file\n",
     ["pvh.bin"]),
    # bookworm-backports' 10.0.2 with its data directory lacking them (measured: padded).
    (("rom: file kvmvapic.bin        : error Failed to open file \u201ckvmvapic.bin\u201d: No "
     "such file or directory\nrom: file pvh.bin             : error Failed to open file "
     "\u201cpvh.bin\u201d: No such file or directory\n"), ["kvmvapic.bin", "pvh.bin"]),
    ('qemu: failed to find romfile "efi-virtio.rom"\n', ["efi-virtio.rom"]),
    ("qemu-system-x86_64: terminating on signal 15 from pid 1\n", []),
])
def test_firmware_qemu_could_not_open_is_read_from_its_stderr(stderr, files):
    assert missing_firmware(stderr) == files


def test_the_firmware_error_names_the_files_qemus_lines_and_the_l_fix(tmp_path):
    fake = QemuBinary(tmp_path / "build" / "qemu-system-x86_64", "10.1.50", "QEMU 10.1.50",
                      frozenset(), layout="build")
    stderr = "rom: file pvh.bin: error Failed to open file\n"
    error = firmware_missing_error(fake, ["pvh.bin"], stderr)
    assert error.message.endswith("could not open the firmware file(s) pvh.bin, so the guest "
                                  "cannot boot; QEMU said: rom: file pvh.bin: error Failed to "
                                  "open file"), error.message
    assert error.fix is not None and error.fix.startswith(
        "a build tree needs its option ROMs: give QEMU -L DIR with a directory holding "
        "pvh.bin"), error.fix
