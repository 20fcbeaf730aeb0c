"""`pci-harness` verbs: thin faces over the factory and the scenarios.

- app.py         the parser, main(): error paragraphs, exit status, signals
- runner.py      the verb runner (settings -> factory -> artifacts -> JSON or text)
- common.py      the options every verb declares (shared ones + --json)
- boot.py        boot                 topology.py    compare, where
- migration.py   pingpong             hotplug.py     hotplug-stress
- intx.py        intx-stress          bootstress.py  boot-stress
- qemu.py        qemu-get             nightly.py     nightly (its run: harness/nightly.py)

A new verb: a module here with `register(subparsers)` whose command builds its
result in a body run by `runner.run_verb`; add it to app.VERB_MODULES.
"""

from __future__ import annotations

from harness.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
