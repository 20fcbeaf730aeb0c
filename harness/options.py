"""The options every CLI verb and the pytest plugin share, declared once, and
the RunSettings built from them, built once.

Both argparse's `add_argument` and pytest's `addoption` take the same
(flags, keyword) form, so one table feeds both faces and they cannot drift;
`run_settings` reads the values back through either face's getter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


@dataclass(frozen=True)
class RunSettings:
    """The options every CLI verb and the pytest plugin share."""

    qemu_binary: str | None = None
    accel: str = "auto"
    timeout_multiplier: float = 1.0
    keep_artifacts: bool = False
    snapshot: bool = True
    firmware: str = "seabios"  # see harness.guest.running.FIRMWARE


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


def run_settings(get: Callable[[str], Any]) -> RunSettings:
    """RunSettings from the shared options' values; `get("--flag")` returns one
    (pytest's `config.getoption`, or an argparse namespace lookup)."""
    multiplier = float(get("--timeout-multiplier"))
    if multiplier <= 0:
        raise UserError(f"--timeout-multiplier must be positive, not {multiplier:g}",
                        fix="give a factor above 0, such as 4 on a loaded host")
    return RunSettings(qemu_binary=get("--qemu-binary"), accel=get("--accel"),
                       timeout_multiplier=multiplier, keep_artifacts=bool(get("--keep-artifacts")),
                       snapshot=not get("--no-snapshot"))
