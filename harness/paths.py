"""Where the harness keeps things: the cache, run directories, package data.

No fixed paths: the cache follows XDG (or $PCI_HARNESS_CACHE) and run
directories are private mkdtemp directories.  Nothing is looked up relative
to the installed package except its package data (guest image recipes and the
conformance suite, found through importlib.resources, so a wheel and an
editable install of a checkout answer alike); reports and artifacts go under
the current directory or where an option says.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

OWNER_FILE = "owner"  # "PID STARTTIME" of the process that made a private run directory
# What a run directory may hold; a directory with anything else is not swept.
RUN_DIR_FILES = frozenset({OWNER_FILE, "authorized_keys", "qmp.sock", "console.in",
                           "console.out",
                           "ssh-hop.sock", "mig.sock"})
_swept = False


def _package_dir(package: str) -> Path:
    """The directory of a package shipped as plain files (never a zip)."""
    from harness.errors import UserError

    try:
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        raise UserError(f"this installation of pci-harness lacks its package data ({package})",
                        fix="reinstall it from a wheel or a checkout (pip install PATH); an "
                            "editable install needs the mapped directory's __init__.py") from None


def guest_images_root() -> Path:
    """The guest image recipes: `guest-images/` of a checkout, or its copy in the wheel."""
    return _package_dir("harness.guest_images")


def suite_root() -> Path:
    """The directory holding the conformance suite's `tests/pci` and `topologies/`.

    In a wheel, the copy under the package (with a pytest.ini of its own); in
    an editable install, the checkout (its pyproject.toml configures pytest).
    """
    return _package_dir("harness.suite.tests").parent


_usable_caches: set[Path] = set()


def cache_root() -> Path:
    """$PCI_HARNESS_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/pci-harness, created and
    checked writable once per process (a UserError naming the variable when not)."""
    explicit = os.environ.get("PCI_HARNESS_CACHE")
    if explicit:
        root, source = Path(explicit), "PCI_HARNESS_CACHE"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg or str(Path.home() / ".cache")) / "pci-harness"
        source = "XDG_CACHE_HOME" if xdg else "HOME"
    if root not in _usable_caches:
        _check_usable(root, source)
        _usable_caches.add(root)
    return root


def _check_usable(root: Path, source: str) -> None:
    """Create `root` and write a file in it, or say why that is impossible."""
    from harness.errors import UserError

    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".writable-", dir=root)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in reversed(root.parents) if p.exists() and not p.is_dir()), None)
        where = (f" ({blocker} is a file)" if blocker is not None
                 else f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root)
                 else "")
        raise UserError(
            f"the cache directory {root} (from {source}) cannot be used: "
            f"{exc.strerror or exc}{where}",
            fix=f"point {source if source != 'HOME' else 'XDG_CACHE_HOME'} at a writable "
                "directory (or set PCI_HARNESS_CACHE=DIR for the harness alone)") from None


def private_dir(prefix: str) -> Path:
    """A new 0700 directory with a short path: unix sockets must fit in 108 bytes.

    It records its owner, so that a later run can remove it when the owner was
    killed before it could (`sweep_run_dirs`).
    """
    global _swept
    if not _swept:
        _swept = True
        sweep_run_dirs(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(_process_identity(os.getpid()) or "")
    return path


def _process_identity(pid: int) -> str | None:
    """"PID STARTTIME" (clock ticks since boot), or None for no such process: a
    recycled PID has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def sweep_run_dirs(prefix: str, root: Path | None = None) -> list[Path]:
    """Remove run directories whose owner process is gone (killed pytest, kill -9).

    Only this user's directories that hold nothing but run-directory files are
    touched; one without an owner record is left alone.
    """
    removed: list[Path] = []
    base = root or Path(tempfile.gettempdir())
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in candidates:
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            names = {p.name for p in path.iterdir()}
            owner = (path / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        if not owner or not names <= RUN_DIR_FILES:
            continue
        pid = int(owner.split()[0]) if owner.split()[0].isdigit() else -1
        if pid > 0 and _process_identity(pid) == owner:
            continue  # its owner still runs
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
