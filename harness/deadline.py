"""Wall-clock deadlines: every wait in the harness has one.

A `Deadline` is created once for a whole operation and passed down, so nested
waits share the budget instead of each starting its own clock.  Seconds given
to the harness are "TCG seconds" scaled by the run's timeout factor
(accelerator x --timeout-multiplier), so a KVM host is simply faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

_scale = 1.0


def set_timeout_scale(scale: float) -> None:
    """Set the process-wide factor applied to every new Deadline."""
    global _scale
    if scale <= 0:
        raise ValueError("timeout scale must be positive")
    _scale = scale


def timeout_scale() -> float:
    return _scale


@dataclass
class Deadline:
    """`seconds` from now (scaled), for the operation named `what`."""

    seconds: float
    what: str
    scaled: bool = True
    expires_at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.scaled:
            self.seconds *= _scale
        self.expires_at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def describe(self) -> str:
        return f"{self.what} did not finish within {self.seconds:.1f} s"

    def poll(self, probe: Callable[[], T | None], interval: float = 0.05) -> T | None:
        """PROBE's first answer that is not None, asked every INTERVAL; None when
        the deadline expired first (the caller names what never happened).  The
        probe is asked once more at expiry, so a slow probe still gets its turn."""
        while True:
            expired = self.expired()
            answer = probe()
            if answer is not None or expired:
                return answer
            time.sleep(min(interval, self.remaining()))
