"""How a known gap shows: when its test fails (its signature), and in the
three-view compare (Shows).

A strict xfail that took any exception would let a regression hide inside a
known failure: a destination killed by a signal, an SSH session that died, a
failed precondition, a harness bug.  So every gap in harness/qemu/known.py
says what its failure looks like, and the pytest plugin (marking.py) checks
the test's exception against it: a failure with another signature is a plain
FAIL that says "failed differently from known gap <id>: ...".

A signature has up to three parts, each checked when given:
- `raises`: the name of the exception's class or one of its bases
  (AssertionError, HopFailure, NotSeenByGuest, Failed for pytest.fail);
- `kind`: the failure kind the exception carries in its `kind` attribute
  (a migration hop's verdict: lost-dirty-pages, destination-load-failed, ...);
- `pattern`: a regular expression searched in the exception's text (QEMU's own
  message, or the named assertion's first words).

Class names, not classes: qemu/ imports neither the guest nor the scenarios.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Shows", "Signature"]


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ is a mismatch, not a crash
        return "<exception str() failed>"


@dataclass(frozen=True)
class Signature:
    """What the gap's test raises when it shows this gap, and nothing else."""

    raises: str = "AssertionError"
    kind: str | None = None
    pattern: str | None = None

    def words(self) -> str:
        """"HopFailure of kind lost-dirty-pages matching /.../"."""
        text = self.raises
        if self.kind is not None:
            text += f" of kind {self.kind}"
        if self.pattern is not None:
            text += f" matching /{self.pattern}/"
        return text

    @staticmethod
    def seen(exc: BaseException) -> str:
        """The failure as the signature sees it: "HopFailure of kind qemu-died: hop 1: ..."."""
        kind = getattr(exc, "kind", None)
        first = next((line.strip() for line in _text(exc).splitlines() if line.strip()), "")
        return (type(exc).__name__ + (f" of kind {kind}" if isinstance(kind, str) else "")
                + (f": {first[:200]}" if first else ""))

    def matches(self, exc: BaseException) -> bool:
        if self.raises not in {cls.__name__ for cls in type(exc).__mro__}:
            return False
        if self.kind is not None and getattr(exc, "kind", None) != self.kind:
            return False
        return self.pattern is None or re.search(self.pattern, _text(exc)) is not None

    def mismatch(self, exc: BaseException) -> str | None:
        """None when `exc` is this gap; else what was expected and what was seen."""
        if self.matches(exc):
            return None
        return f"expected {self.words()}, got {self.seen(exc)}"


@dataclass(frozen=True)
class Shows:
    """How a gap shows in the three-view compare (`compare`, threeview): the model
    states the spec, QEMU reports something else for `field` of a device of
    `driver` (None: any device, or the root bus)."""

    field: str
    driver: str | None = None
    qemu: object = None          # the value QEMU reports instead; None: whatever it is
    #: Where the device must sit: (property, value) some device above it has, such
    #: as ("hotplug", False) for "below a port with hotplug=off"; None: anywhere.
    below: tuple[str, object] | None = None

    def matches(self, driver: str | None, field: str, qemu_value: object,
                ancestors: Sequence[Any] = ()) -> bool:
        """`ancestors`: the topology's devices above this one (Topology.ancestors)."""
        return (field == self.field and self.driver in (None, driver)
                and (self.qemu is None or qemu_value == self.qemu)
                and (self.below is None or any(_has(a, *self.below) for a in ancestors)))


def _has(device: Any, name: str, value: object) -> bool:
    """Does the topology device have property `name` = `value` (booleans as QEMU reads)?"""
    return bool((device.flag(name) if isinstance(value, bool) else device.prop(name)) == value)
