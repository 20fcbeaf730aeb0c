"""The AHCI-root guest flavour: a bootable raw disk built without mounting anything.

A recipe with `kind = "ahci-root"` (guest-images/debian12-ahci/) builds
`disk.raw`: an MBR (syslinux's mbr.bin plus a partition table written here),
a FAT16 boot partition (mkfs.fat, `syslinux -i` through mtools, files copied
with mcopy) holding the distribution's bzImage and a small initramfs, and an
ext4 root partition made by `mke2fs -d` from a directory tree.  The pieces are
written at their offsets into one file, which is what `dd seek=` would do.
extlinux is not an option: it installs only onto a mounted file system.

The firmware loads the boot loader, kernel and initramfs through its AHCI
driver, and the guest's root file system lives on AHCI, so every boot of this
image exercises QEMU's AHCI emulation from the first sector on.

syslinux, mke2fs and e2fsck come from the recipe's Debian packages (their
versions are in the cache key); mkfs.fat and mtools are build tools from the
host (bin/bootstrap.sh installs dosfstools and mtools).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ImageBuildError
from harness.guest.image import (
    _assemble_initramfs,
    _copy_with_libs,
    _write_cpio,
    ensure_built,
    install_modules,
)
from harness.progress import Progress

SECTOR = 512
MIB = 1024 * 1024
#: The first partition starts at 1 MiB, like every modern partitioner does.
FIRST_LBA = 2048
ROOT_LABEL = "harness-root"


@dataclass(frozen=True)
class DiskImage:
    """A built AHCI-root guest: a raw disk QEMU boots through SeaBIOS."""

    key: str
    directory: Path
    disk: Path
    kernel_release: str
    root_partition: str  # as the guest names it, e.g. /dev/sda2
    uefi_loader: str | None = None  # EFI/BOOT/BOOTX64.EFI when UEFI firmware can boot it


@dataclass(frozen=True)
class Partition:
    """One MBR primary partition, in 512-byte sectors."""

    start_lba: int
    sectors: int
    type_id: int
    bootable: bool = False


def mbr_sector(boot_code: bytes, partitions: list[Partition], signature: int) -> bytes:
    """Sector 0: boot code (up to 440 bytes), disk signature, 4 entries, 55 AA.

    CHS fields are filled with the "use LBA" maximum (fe ff ff): syslinux's
    mbr.bin and every current kernel read the LBA fields.
    """
    if len(boot_code) > 440:
        raise ImageBuildError(f"MBR boot code is {len(boot_code)} bytes, more than 440")
    if len(partitions) > 4:
        raise ImageBuildError("an MBR holds at most four primary partitions")
    sector = bytearray(SECTOR)
    sector[:len(boot_code)] = boot_code
    struct.pack_into("<I", sector, 440, signature)
    for index, part in enumerate(partitions):
        entry = struct.pack("<B3sB3sII", 0x80 if part.bootable else 0x00, b"\xfe\xff\xff",
                            part.type_id, b"\xfe\xff\xff", part.start_lba, part.sectors)
        sector[446 + 16 * index:446 + 16 * (index + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def parse_mbr(sector: bytes) -> list[Partition]:
    """The non-empty partition entries of an MBR sector (the unit tests' oracle)."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        raise ValueError("not an MBR: no 55 AA signature at offset 510")
    parts = []
    for index in range(4):
        flag, _, type_id, _, start, count = struct.unpack_from("<B3sB3sII", sector,
                                                               446 + 16 * index)
        if type_id:
            parts.append(Partition(start, count, type_id, flag == 0x80))
    return parts


def _tool(argv: list[str], what: str, env: dict[str, str] | None = None,
          fix: str | None = None) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise ImageBuildError(f"{argv[0]} is not installed (needed to {what})",
                              fix=fix or "run bin/bootstrap.sh as root, or install dosfstools "
                                         "and mtools") from None
    if proc.returncode != 0:
        raise ImageBuildError(f"{what}: {' '.join(argv[:2])} ... failed with status "
                              f"{proc.returncode}", tail=(proc.stdout + proc.stderr)[-2000:])


def _staged(staging: Path, binary: str) -> list[str]:
    """argv prefix that runs a dynamic binary unpacked in `staging` with its own libraries."""
    libpath = ":".join(str(staging / d) for d in ("lib/x86_64-linux-gnu",
                                                  "usr/lib/x86_64-linux-gnu"))
    return [str(staging / "lib64/ld-linux-x86-64.so.2"), "--library-path", libpath,
            str(staging / binary.lstrip("/"))]


def busybox_links(staging: Path, root: Path) -> None:
    """The applet symlinks `busybox --install -s` would make at boot, made now:
    on a disk root every boot would otherwise write hundreds of links."""
    busybox = staging / "bin/busybox"
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath("/bin/busybox", "/" + str(Path(applet).parent)))


def build_stage1(rdir: Path, recipe: dict[str, Any], staging: Path, root: Path,
                 release: str, report: Progress) -> None:
    """The initramfs: busybox, e2fsck and the modules that reach the root."""
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "newroot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(staging / "bin/busybox", root / "bin/busybox")
    busybox_links(staging, root)
    for binary in recipe.get("initrd_binaries", []):
        _copy_with_libs(staging, root, str(binary))
    modules = install_modules(staging, root, release,
                              [str(m) for m in recipe["initrd_modules"]])
    report(f"initramfs: {len(modules)} kernel modules to reach the root")
    _tool([str(staging / "bin/busybox"), "depmod", "-b", str(root), release],
          "index the initramfs modules")
    shutil.copy2(rdir / "initrd.sh", root / "init")
    os.chmod(root / "init", 0o755)


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*"))


EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"  # the removable-media path UEFI firmware boots
#: GRUB's console markers (the UEFI boot's bootloader and load phases).
GRUB_STARTED, GRUB_LOADED = "HARNESS-GRUB started", "HARNESS-GRUB loaded"


def syslinux_entry(text: str) -> dict[str, str]:
    """The LINUX, INITRD and APPEND values of syslinux.cfg's (only) entry."""
    entry: dict[str, str] = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() in ("LINUX", "KERNEL", "INITRD", "APPEND") and rest.strip():
            entry[{"KERNEL": "LINUX"}.get(word.upper(), word.upper())] = rest.strip()
    missing = [k for k in ("LINUX", "INITRD", "APPEND") if k not in entry]
    if missing:
        raise ImageBuildError(f"syslinux.cfg has no {', '.join(missing)} line",
                              fix="give the recipe's syslinux.cfg LINUX, INITRD and APPEND lines")
    return entry


def grub_cfg(entry: dict[str, str]) -> str:
    """GRUB's configuration for the UEFI path: the same kernel line as syslinux's,
    on the serial console, with a marker before and after it reads the files."""
    return ("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
            f"echo {GRUB_STARTED}\ninsmod part_msdos\ninsmod fat\nset root=(hd0,msdos1)\n"
            f"linux {entry['LINUX']} {entry['APPEND']}\ninitrd {entry['INITRD']}\n"
            f"echo {GRUB_LOADED}\nboot\n")


def _make_efi_loader(rdir: Path, staging: Path, work: Path) -> Path:
    """EFI/BOOT/BOOTX64.EFI: GRUB with its configuration and modules inside
    (grub-mkstandalone: the host's grub-common, the recipe's grub-efi-amd64-bin)."""
    cfg = work / "grub.cfg"
    cfg.write_text(grub_cfg(syslinux_entry((rdir / "syslinux.cfg").read_text())))
    loader = work / "BOOTX64.EFI"
    _tool(["grub-mkstandalone", "-O", "x86_64-efi",
           "-d", str(staging / "usr/lib/grub/x86_64-efi"), "--locales=", "--fonts=",
           "--modules=part_msdos fat linux serial normal echo terminal",
           "--themes=", "-o", str(loader), f"boot/grub/grub.cfg={cfg}"],
          "make the UEFI boot loader (GRUB)",
          fix="run bin/bootstrap.sh as root, or install grub-common (grub-mkstandalone)")
    return loader


def _make_boot_partition(rdir: Path, staging: Path, work: Path, files: dict[str, Path],
                         size_mib: int) -> Path:
    image = work / "boot.fat"
    # -h: hidden sectors = the partition's start, so the FAT boot sector that
    # syslinux writes finds its own partition whatever the MBR hands over.
    _tool(["mkfs.fat", "-F", "16", "-n", "HARNESSBOOT", "-h", str(FIRST_LBA), "-C",
           str(image), str(size_mib * 1024)], "make the FAT boot partition")
    mtools_env = {"MTOOLS_SKIP_CHECK": "1"}
    _tool(_staged(staging, "/usr/bin/syslinux") + ["--install", str(image)],
          "install syslinux on the boot partition", env=mtools_env)
    for name, src in [("syslinux.cfg", rdir / "syslinux.cfg"), *files.items()]:
        for parent in reversed(Path(name).parents[:-1]):  # EFI, EFI/BOOT
            _tool(["mmd", "-D", "s", "-i", str(image), f"::/{parent}"],
                  f"make {parent} on the boot partition", env=mtools_env)
        _tool(["mcopy", "-i", str(image), str(src), f"::/{name}"],
              f"copy {name} onto the boot partition", env=mtools_env)
    return image


def _make_root_partition(staging: Path, work: Path, tree: Path, min_mib: int) -> Path:
    size_mib = max(min_mib, (_tree_bytes(tree) * 3 // 2) // MIB + 16)
    image = work / "root.ext4"
    _tool(_staged(staging, "/sbin/mke2fs") + ["-q", "-F", "-t", "ext4", "-L", ROOT_LABEL,
                                              "-E", "root_owner=0:0", "-d", str(tree),
                                              str(image), f"{size_mib}M"],
          "make the ext4 root with mke2fs -d")
    return image


def assemble_disk(target: Path, mbr_code: bytes, boot: Path, root: Path) -> list[Partition]:
    """Write MBR + boot + root at their offsets into `target` (raw)."""
    boot_sectors = boot.stat().st_size // SECTOR
    root_start = FIRST_LBA + boot_sectors
    root_start += (-root_start) % FIRST_LBA  # 1 MiB aligned
    root_sectors = root.stat().st_size // SECTOR
    parts = [Partition(FIRST_LBA, boot_sectors, 0x06, bootable=True),  # FAT16
             Partition(root_start, root_sectors, 0x83)]                 # Linux
    with open(target, "wb") as disk:
        disk.write(mbr_sector(mbr_code, parts, int.from_bytes(os.urandom(4), "little")))
        for part, piece in zip(parts, (boot, root), strict=True):
            disk.seek(part.start_lba * SECTOR)
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, disk, 4 * MIB)
        disk.truncate((root_start + root_sectors) * SECTOR)
    return parts


def build_disk(rdir: Path, recipe: dict[str, Any], staging: Path, work: Path, out: Path,
               release: str, report: Progress) -> dict[str, Any]:
    """Build out/disk.raw; returns what the manifest records about it."""
    tree = work / "rootfs"
    _assemble_initramfs(rdir, recipe, staging, tree, release, report)
    busybox_links(staging, tree)
    stage1 = work / "stage1"
    build_stage1(rdir, recipe, staging, stage1, release, report)
    initrd = work / "initrd.img"
    _write_cpio(stage1, initrd)
    vmlinuz = staging / "boot" / f"vmlinuz-{release}"
    report("making the FAT boot partition (syslinux) and the ext4 root (mke2fs -d)")
    files = {"vmlinuz": vmlinuz, "initrd.img": initrd}
    if recipe.get("uefi_loader", False):
        report("making the UEFI boot loader (grub-mkstandalone)")
        files[EFI_LOADER] = _make_efi_loader(rdir, staging, work)
    boot = _make_boot_partition(rdir, staging, work, files,
                                int(recipe.get("boot_partition_mib", 32)))
    root = _make_root_partition(staging, work, tree,
                                int(recipe.get("root_partition_min_mib", 64)))
    mbr_code = (staging / "usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
    parts = assemble_disk(out / "disk.raw", mbr_code, boot, root)
    return {"disk": "disk.raw", "root_partition": "/dev/sda2",
            "uefi_loader": EFI_LOADER if EFI_LOADER in files else None,
            "partitions": [{"start_lba": p.start_lba, "sectors": p.sectors,
                            "type": p.type_id, "bootable": p.bootable} for p in parts]}


DEFAULT_FLAVOUR = "debian12-ahci"
_memo: dict[str, DiskImage] = {}


def ensure_disk_image(name: str = DEFAULT_FLAVOUR, progress: Progress | None = None) -> DiskImage:
    """The cached AHCI-root disk of recipe `name`, built first if needed."""
    if name in _memo:
        return _memo[name]
    key, final, manifest = ensure_built(name, progress, builder=build_disk,
                                        builder_source=Path(__file__).read_bytes())
    if "disk" not in manifest:
        raise ImageBuildError(f"guest recipe {name!r} does not build a disk",
                              fix='use a recipe with kind = "ahci-root", such as '
                                  f'{DEFAULT_FLAVOUR!r}')
    image = DiskImage(key=key, directory=final, disk=final / str(manifest["disk"]),
                      kernel_release=str(manifest["kernel_release"]),
                      root_partition=str(manifest["root_partition"]),
                      uefi_loader=manifest.get("uefi_loader"))
    _memo[name] = image
    return image
