"""Find or build the guest image (kernel + initramfs) from Debian packages.

The recipe lives in `guest-images/<name>/` (recipe.toml + init.sh).  Packages
are fetched with `apt-get download` and unpacked with `dpkg -x`; nothing is
taken from the host's own file system, so the image is the same on every
Debian 12 host with the same package versions.

Images are cached under `$XDG_CACHE_HOME/pci-harness/images/<key>/`, where the
key hashes the recipe, the init script, this builder's version and the
resolved package versions.  Several xdist workers starting together build it
once: the build runs under a file lock and publishes the directory with an
atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import ImageBuildError, UserError
from harness.paths import cache_root, guest_images_root
from harness.progress import Progress

#: Bump when the builder's output changes for the same recipe.
BUILDER_VERSION = "3"



@dataclass(frozen=True)
class GuestImage:
    """A built guest: what QEMU needs to boot it."""

    key: str
    directory: Path
    vmlinux: Path
    initrd: Path
    kernel_release: str

    @property
    def cmdline_base(self) -> str:
        # loglevel=5: every kernel message at warning level and worse (an oops or
        # GPF header is printed at the default level 4, hung tasks and I/O errors
        # at 3) reaches the serial console, console.log and the trouble scan.  A
        # boot prints one such line (measured on q35), so this costs no boot time;
        # `quiet` keeps the info-level chatter off the console.  i8042 probing
        # and the TSC calibration wait are pure boot delay in a guest without them.
        # rodata=off: no read-only remap and W+X scan of the kernel at boot
        # (~0.2 s under TCG); kernel hardening is not what these guests test.
        return ("console=ttyS0 quiet loglevel=5 panic=-1 oops=panic rodata=off "
                "i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check "
                "mitigations=off nowatchdog random.trust_cpu=on cryptomgr.notests "
                "8250.nr_uarts=1 rdinit=/init")


def recipe_dir(name: str = "debian12", root: Path | None = None) -> Path:
    """`guest-images/<name>/`, from the installed package data (or `root`)."""
    root = root or guest_images_root()
    path = root / name
    if not (path / "recipe.toml").is_file():
        known = sorted(p.parent.name for p in root.glob("*/recipe.toml")) if root.is_dir() else []
        raise UserError(f"guest image recipe {name!r} not found: no {path}/recipe.toml "
                        f"(recipes there: {', '.join(known) or 'none'})",
                        fix="pass one of those recipe names; if there are none, reinstall "
                            "pci-harness from a wheel or checkout that ships guest-images/")
    return path


def _stderr_progress(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} is not installed",
                              fix="install apt, dpkg and cpio (bin/pci-harness does this)") from exc
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv[:3])} ... failed with status {proc.returncode}",
                              tail=proc.stderr[-2000:])
    return proc.stdout


def _resolve_versions(recipe: dict[str, object]) -> dict[str, str]:
    """Map every package of the recipe to the version apt would download."""
    meta = str(recipe["kernel_package"])
    depends = _run(["apt-cache", "depends", meta])
    kernel = next((line.split(":", 1)[1].strip() for line in depends.splitlines()
                   if line.strip().startswith("Depends:") and "linux-image-" in line), None)
    if kernel is None:
        raise ImageBuildError(f"cannot resolve {meta} to a kernel package",
                              fix="run apt-get update (bin/pci-harness does this as root)")
    names = [kernel] + [str(p) for p in recipe["packages"]]  # type: ignore[attr-defined]
    policy = _run(["apt-cache", "policy", *names])
    versions: dict[str, str] = {}
    current = None
    for line in policy.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":")
        elif current and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    missing = [n for n in names if versions.get(n) in (None, "(none)")]
    if missing:
        raise ImageBuildError(f"apt has no candidate for {', '.join(missing)}",
                              fix="run apt-get update, or check the Debian 12 sources")
    return versions


def _apt_lists_stamp() -> str:
    """Changes whenever `apt-get update` changes what apt would download."""
    lists = Path("/var/lib/apt/lists")
    try:
        return ":".join(f"{p.name}={p.stat().st_mtime_ns}" for p in sorted(lists.glob("*Packages*")))
    except OSError:
        return ""


def _cached_versions(recipe: dict[str, object], memo: Path) -> dict[str, str]:
    """_resolve_versions, remembered until the recipe or the apt lists change.

    Asking apt costs ~0.5 s (seconds on a loaded host) on every verb; the
    answer only changes with `apt-get update`.
    """
    stamp = hashlib.sha256(json.dumps([recipe, _apt_lists_stamp()], sort_keys=True,
                                      default=str).encode()).hexdigest()
    try:
        cached = json.loads(memo.read_text())
        if cached.get("stamp") == stamp and _apt_lists_stamp():
            return dict(cached["versions"])
    except (OSError, ValueError, KeyError):
        pass
    versions = _resolve_versions(recipe)
    tmp = memo.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"stamp": stamp, "versions": versions}))
    os.replace(tmp, memo)
    return versions


def shared_services(recipe_path: Path) -> Path:
    """guest-images/common/services.sh: the part of /init every flavour shares."""
    return recipe_path.parent / "common" / "services.sh"


def image_key(recipe_path: Path, versions: dict[str, str], builder_source: bytes = b"") -> str:
    """The build's cache key: the recipe's files, the resolved package versions,
    BUILDER_VERSION, and a flavour builder's own source (`builder_source`)."""
    digest = hashlib.sha256()
    digest.update(BUILDER_VERSION.encode())
    if builder_source:
        digest.update(b"builder\0" + builder_source)
    for path in [*sorted(recipe_path.iterdir()), shared_services(recipe_path)]:
        if path.is_file():  # recipe.toml, init.sh, helper scripts, the shared services
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(versions, sort_keys=True).encode())
    return digest.hexdigest()[:16]


_memo: dict[str, GuestImage] = {}


def ensure_image(name: str = "debian12", progress: Progress | None = None) -> GuestImage:
    """Return the cached image for the recipe, building it first if needed."""
    if name in _memo:
        return _memo[name]
    key, final, manifest = ensure_built(name, progress)
    image = GuestImage(key=key, directory=final, vmlinux=final / "vmlinux",
                       initrd=final / "initrd.cpio", kernel_release=manifest["kernel_release"])
    _memo[name] = image
    return image


#: Builds a flavour's files into `out` from the unpacked packages:
#: (recipe dir, recipe, staging, work dir, out, kernel release, progress) -> manifest entries.
FlavourBuilder = Callable[[Path, dict[str, Any], Path, Path, Path, str, Progress],
                          dict[str, Any]]


def ensure_built(name: str, progress: Progress | None = None,
                 builder: FlavourBuilder | None = None,
                 builder_source: bytes = b"") -> tuple[str, Path, dict[str, Any]]:
    """(key, directory, manifest) of the recipe's cached build, building it if needed.

    Shared by every flavour: the initramfs guest (the default builder, here, keyed
    by BUILDER_VERSION) and the AHCI-root disk (harness/guest/diskimage.py passes
    its own builder for recipes with `kind = "ahci-root"`, and its module's source
    for the key: a change to how the disk is built is a new disk).
    """
    report = progress or _stderr_progress
    rdir = recipe_dir(name)
    recipe = tomllib.loads((rdir / "recipe.toml").read_text())
    kind = recipe.get("kind", "initramfs")
    if (kind == "initramfs") != (builder is None):
        raise ImageBuildError(f"guest recipe {name!r} is of kind {kind!r}, which this "
                              "caller cannot use",
                              fix="boot-stress uses the ahci-root flavours, guests the "
                                  "initramfs ones")
    images = cache_root() / "images"
    images.mkdir(parents=True, exist_ok=True)
    versions = _cached_versions(recipe, images / f"{name}-resolved.json")
    key = image_key(rdir, versions, builder_source)
    final = images / f"{name}-{key}"
    if not (final / "manifest.json").is_file():
        with FileLock(str(images / f"{name}-{key}.lock")):
            if not (final / "manifest.json").is_file():
                _build(rdir, recipe, versions, final, report, builder or _build_initramfs)
    return key, final, json.loads((final / "manifest.json").read_text())


def cached_image(name: str = "debian12") -> GuestImage | None:
    """The image ensure_image would return, if it is already built; never builds."""
    rdir = recipe_dir(name)
    recipe = tomllib.loads((rdir / "recipe.toml").read_text())
    images = cache_root() / "images"
    if not images.is_dir():
        return None
    key = image_key(rdir, _cached_versions(recipe, images / f"{name}-resolved.json"))
    final = images / f"{name}-{key}"
    if not (final / "manifest.json").is_file():
        return None
    manifest = json.loads((final / "manifest.json").read_text())
    return GuestImage(key=key, directory=final, vmlinux=final / "vmlinux",
                      initrd=final / "initrd.cpio", kernel_release=manifest["kernel_release"])


def _build(rdir: Path, recipe: dict[str, Any], versions: dict[str, str], final: Path,
           report: Progress, builder: FlavourBuilder) -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        debs = work / "debs"
        debs.mkdir()
        report(f"downloading {len(versions)} Debian packages")
        _run(["apt-get", "download", "-q", *[f"{n}={v}" for n, v in versions.items()]], cwd=debs)
        staging = work / "staging"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(staging)])
        vmlinuz = next((staging / "boot").glob("vmlinuz-*"))
        release = vmlinuz.name.removeprefix("vmlinuz-")
        out = work / "out"
        out.mkdir()
        manifest: dict[str, Any] = {"kernel_release": release, "packages": versions}
        manifest.update(builder(rdir, recipe, staging, work, out, release, report))
        manifest["built_s"] = round(time.monotonic() - started, 1)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.replace(out, final)
        report(f"image {final.name} built in {manifest['built_s']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_initramfs(rdir: Path, recipe: dict[str, Any], staging: Path, work: Path, out: Path,
                     release: str, report: Progress) -> dict[str, Any]:
    """The debian12 flavour: the ELF vmlinux and an uncompressed initramfs."""
    report("unpacked; extracting vmlinux from the bzImage")
    vmlinuz = staging / "boot" / f"vmlinuz-{release}"
    (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    root = work / "initramfs"
    _assemble_initramfs(rdir, recipe, staging, root, release, report)
    report("writing initramfs")
    _write_cpio(root, out / "initrd.cpio")
    return {}


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The xz stream inside a bzImage, decompressed: the ELF vmlinux.

    QEMU boots the ELF through PVH, which skips the ~3 s the kernel's own
    decompressor costs under TCG.
    """
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise ImageBuildError("no xz stream in the kernel image",
                              fix="the recipe expects a CONFIG_KERNEL_XZ Debian kernel")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = decompressor.decompress(bzimage[start:])
    if not elf.startswith(b"\x7fELF"):
        raise ImageBuildError("the kernel's xz stream is not an ELF image")
    return elf


def _elf_sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of a 64-bit little-endian ELF file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    sections = {}
    for h in headers:
        name = names[h[0]:names.index(b"\0", h[0])].decode()
        sections[name] = data[h[4]:h[4] + h[5]] if h[1] != 8 else b""  # 8 = NOBITS
    return sections


def _elf_needed(data: bytes) -> list[str]:
    """DT_NEEDED entries of a dynamic ELF."""
    sections = _elf_sections(data)
    dynamic, dynstr = sections.get(".dynamic", b""), sections.get(".dynstr", b"")
    needed = []
    for off in range(0, len(dynamic), 16):
        tag, val = struct.unpack_from("<qQ", dynamic, off)
        if tag == 0:
            break
        if tag == 1:
            needed.append(dynstr[val:dynstr.index(b"\0", val)].decode())
    return needed


def _modinfo(data: bytes) -> dict[str, list[str]]:
    info: dict[str, list[str]] = {}
    for entry in _elf_sections(data).get(".modinfo", b"").split(b"\0"):
        if b"=" in entry:
            key, value = entry.decode(errors="replace").split("=", 1)
            info.setdefault(key, []).append(value)
    return info


def install_modules(staging: Path, root: Path, release: str, wanted: list[str]) -> list[Path]:
    """Copy the `wanted` kernel modules, with everything they depend on, from the
    unpacked packages (`staging`) into an initramfs `root`, plus the index files
    depmod reads there.  The copied .ko files, for the caller's report."""
    moddir = staging / "lib/modules" / release
    modules = _module_closure(moddir, wanted)
    for ko in modules:
        dst = root / ko.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ko, dst)
    for extra in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (moddir / extra).exists():
            shutil.copy2(moddir / extra, root / "lib/modules" / release / extra)
    return modules


def _module_closure(moddir: Path, wanted: list[str]) -> list[Path]:
    """The .ko files of `wanted` and everything their depends=/softdep= name."""
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in moddir.rglob("*.ko")}
    result: dict[str, Path] = {}
    todo = [w.replace("-", "_") for w in wanted]
    soft_only: set[str] = set()
    while todo:
        name = todo.pop()
        if name in result:
            continue
        if name not in index and name in soft_only:
            continue  # a softdep may name an alias (crypto-crc32c); the recipe lists the module
        if name not in index:
            builtin = (moddir / "modules.builtin").read_text()
            if f"/{name}.ko" in builtin.replace("-", "_"):
                continue
            raise ImageBuildError(f"kernel module {name} is neither a module nor built in",
                                  fix="remove it from the recipe's modules list")
        result[name] = index[name]
        info = _modinfo(index[name].read_bytes())
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                todo.append(dep.replace("-", "_"))
        for soft in info.get("softdep", []):
            for word in soft.split():
                if not word.endswith(":"):
                    soft_only.add(word.replace("-", "_"))
                    todo.append(word.replace("-", "_"))
    return sorted(result.values())


def _copy_with_libs(staging: Path, root: Path, binary: str) -> None:
    libdirs = [staging / d for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
                                      "lib64", "lib")]
    todo = [staging / binary.lstrip("/")]
    seen: set[Path] = set()
    while todo:
        src = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        dst = root / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.resolve(), dst)
        for lib in _elf_needed(src.resolve().read_bytes()):
            found = next((d / lib for d in libdirs if (d / lib).exists()), None)
            if found is None:
                raise ImageBuildError(f"{binary} needs {lib}, which no recipe package provides",
                                      fix="add its Debian package to the recipe")
            todo.append(found)
    loader = staging / "lib64/ld-linux-x86-64.so.2"
    (root / "lib64").mkdir(exist_ok=True)
    if not (root / "lib64/ld-linux-x86-64.so.2").exists():
        shutil.copy2(loader.resolve(), root / "lib64/ld-linux-x86-64.so.2")


def _assemble_initramfs(rdir: Path, recipe: dict[str, object], staging: Path, root: Path,
                        release: str, report: Progress) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "proc", "sys", "dev",
              "root", "tmp", "run", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(staging / "bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    for binary in recipe["binaries"]:  # type: ignore[attr-defined]
        _copy_with_libs(staging, root, str(binary))
    for data in recipe.get("data_files", []):  # type: ignore[attr-defined]
        src = staging / str(data).lstrip("/")
        (root / src.relative_to(staging)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.resolve(), root / src.relative_to(staging))
    modules = install_modules(staging, root, release,
                              [str(m) for m in recipe["modules"]])  # type: ignore[attr-defined]
    report(f"{len(modules)} kernel modules (with dependencies)")
    # busybox-static is static, so its depmod runs on any x86-64 host.
    _run([str(staging / "bin/busybox"), "depmod", "-b", str(root), release])
    # A host key made at build time: generating one in the guest costs a boot.
    libpath = ":".join(str(staging / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    _run([str(staging / "lib64/ld-linux-x86-64.so.2"), "--library-path", libpath,
          str(staging / "usr/bin/dropbearkey"), "-t", "ed25519", "-f",
          str(root / "etc/dropbear/hostkey")])
    (root / "etc/passwd").write_text("root:*:0:0:root:/root:/bin/sh\n")  # '*': '!' locks the key too
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shells").write_text("/bin/sh\n")
    profile = "export PATH=/sbin:/bin:/usr/sbin:/usr/bin PS1='guest# '\n"
    if (rdir / "restored.sh").is_file():  # flavours restored from snapshots
        profile += ". /etc/harness-restored.sh\n"
        shutil.copy2(rdir / "restored.sh", root / "etc/harness-restored.sh")
    (root / "etc/profile").write_text(profile)
    shutil.copy2(shared_services(rdir), root / "etc/harness-services.sh")
    shutil.copy2(rdir / "init.sh", root / "init")
    os.chmod(root / "init", 0o755)


def _write_cpio(root: Path, target: Path) -> None:
    # Uncompressed newc: unpacking costs less TCG time than decompressing.
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(target, "wb") as out:
        proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                              input="\n".join(files).encode(), cwd=root, stdout=out,
                              stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise ImageBuildError("cpio failed", tail=proc.stderr.decode(errors="replace"))
