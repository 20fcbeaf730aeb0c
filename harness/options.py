"""The options every CLI verb and the pytest plugin share, declared once.

Both argparse's `add_argument` and pytest's `addoption` take the same
(flags, keyword) form, so one table feeds both faces and they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SHARED_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--qemu-binary", {"metavar": "PATH", "default": None,
                       "help": "QEMU to run (default: $PCI_HARNESS_QEMU or "
                               "qemu-system-x86_64 on PATH)"}),
    ("--accel", {"choices": ("auto", "kvm", "tcg"), "default": "auto",
                 "help": "auto probes KVM with a real boot and falls back to TCG"}),
    ("--timeout-multiplier", {"type": float, "default": 1.0, "metavar": "X",
                              "help": "scale every deadline (slow or loaded hosts)"}),
    ("--keep-artifacts", {"action": "store_true",
                          "help": "keep logs, command lines and reproduce.sh even on success"}),
    ("--no-snapshot", {"action": "store_true",
                       "help": "always cold-boot guests (no snapshot cache)"}),
)


def add_shared_options(add: Callable[..., Any]) -> None:
    """Declare the shared options through `add` (add_argument or addoption)."""
    for flag, kwargs in SHARED_OPTIONS:
        add(flag, **kwargs)
