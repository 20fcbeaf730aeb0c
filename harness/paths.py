"""Where the harness keeps things: the cache, run directories, the checkout.

No fixed paths: the cache follows XDG (or $PCI_HARNESS_CACHE), run
directories are private mkdtemp directories, and the project root is found
from this file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    explicit = os.environ.get("PCI_HARNESS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pci-harness"


def private_dir(prefix: str) -> Path:
    """A new 0700 directory with a short path: unix sockets must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix))
