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
    #: --firmware NAME|FILE|ovmf:FILE, resolved per QEMU by harness.qemu.firmware.
    firmware: str = "seabios"


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
    ("--firmware", {"metavar": "NAME|FILE|ovmf:FILE", "default": "seabios",
                    "help": "firmware: seabios (default), qboot or ovmf as they come with the "
                            "QEMU under test, a BIOS image (-bios FILE), or ovmf:CODE.fd[,VARS.fd]"}),
)


def add_shared_options(add: Callable[..., Any], skip: tuple[str, ...] = ()) -> None:
    """Declare the shared options through `add` (add_argument or addoption); SKIP
    names flags a verb declares its own way (the nightly's repeatable --firmware)."""
    for flag, kwargs in SHARED_OPTIONS:
        if flag not in skip:
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
                       snapshot=not get("--no-snapshot"), firmware=_firmware(get("--firmware")))


def _firmware(value: Any) -> str:
    if isinstance(value, list):  # the nightly's repeatable form: its runs pick one each
        value = value[0] if value else "seabios"
    spec = str(value or "seabios").strip()
    if not spec:
        raise UserError("--firmware is empty", fix="name seabios, qboot or ovmf, or give a file")
    return spec
