"""Artifact directories: where a run's logs go and when they are kept.

One rule for the CLI and the pytest plugin: a run or test that failed keeps
its directory (a failure leaves something a person can read), one that passed
removes it unless --keep-artifacts asked to keep it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ARTIFACTS_ENV = "PCI_HARNESS_ARTIFACTS"


def settle_artifacts(path: Path, *, ok: bool, keep: bool) -> bool:
    """Remove `path` when the run passed and nobody asked to keep it.
    True when the directory stays (failed, or --keep-artifacts)."""
    if ok and not keep:
        shutil.rmtree(path, ignore_errors=True)
        return False
    return True


def new_run_dir(verb: str) -> Path:
    """A fresh 0700 directory for one CLI run: under $PCI_HARNESS_ARTIFACTS when
    set, else the system's temporary directory."""
    base = os.environ.get(ARTIFACTS_ENV)
    parent = Path(base) if base else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"pci-harness-{verb}-", dir=parent))
