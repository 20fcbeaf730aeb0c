"""The interfaces that more than one module needs of a guest or of QEMU.

One home, so that a fake in a unit test implements the same thing the real
class does, and a reader who meets `Shell` or `QmpEndpoint` anywhere knows
which it is.  The real implementations: `harness.guest.running.Guest` (a
Shell, and a RunningGuest), `harness.qemu.qmp.Qmp` (a QmpEndpoint).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["QmpEndpoint", "RunningGuest", "Shell"]


class Shell(Protocol):
    """A command line in the guest: `execute` gives status and output, `succeed` raises."""

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]: ...

    def succeed(self, command: str, timeout: float = 60.0) -> str: ...


class QmpEndpoint(Protocol):
    """Anything that runs a QMP command and returns its 'return' value (raises on error)."""

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


class RunningGuest(Shell, Protocol):
    """A guest with its QMP endpoint and serial console, as the INT#x stress reads it."""

    @property
    def qmp(self) -> Any: ...

    @property
    def console(self) -> Any: ...
