"""Long work says what it does: one line per step on stderr (stdout is a verb's answer)."""

from __future__ import annotations

import sys
from collections.abc import Callable

#: Where a long operation reports its steps: `progress("booting ...")`.
Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"pci-harness: {message}", file=sys.stderr, flush=True)
