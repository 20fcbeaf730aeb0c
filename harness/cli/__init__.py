"""`pci-harness` verbs: thin faces over the factory and the scenarios.

- app.py        the parser, main(): error paragraphs, exit status, signals
- common.py     shared options, RunSettings from them, progress, artifact dir
- boot.py       boot                 topology.py   compare, where
- migration.py  pingpong             hotplug.py    hotplug-stress
- intx.py       intx-stress          bootstress.py boot-stress
- qemu.py       qemu-get             (nightly: harness/nightly.py)
"""

from __future__ import annotations

from harness.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
