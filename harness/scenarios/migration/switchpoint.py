"""Where a ping-pong hop switches over: a guest instruction named by a switch spec.

A spec is what `pingpong --switch-at` takes:

    SYMBOL            the function's first instruction
    SYMBOL+OFF        OFF bytes into it (decimal or 0x hex), inside the function
    SYMBOL@N          the Nth time it is reached in this hop (N >= 1)
    SYMBOL:return     the instruction its caller resumes at, when it returns
    random:S1,S2,...  per hop, a symbol and a step count from a seeded generator

each optionally followed by K single-steps (`--step K`); `--switch-sweep SYMBOL
--steps N` is hop i at SYMBOL plus i-1 steps, so N hops walk the first N
instruction boundaries of the path from SYMBOL.  Addresses come from the
guest's own /proc/kallsyms (read once per run: KASLR moves the kernel and the
modules per boot, and a migrated guest keeps its addresses), modules included.
"""

from __future__ import annotations

import bisect
import difflib
import random
import re
from dataclasses import dataclass

from harness.errors import UserError

__all__ = ["Kallsyms", "Located", "SwitchPlan", "SwitchPoint", "parse_switch_spec"]

_SYMBOL = r"[A-Za-z_.$][\w.$]*"
_SPEC = re.compile(rf"^(?P<sym>{_SYMBOL})(?:\+(?P<off>0[xX][0-9a-fA-F]+|\d+))?"
                   r"(?P<ret>:return)?(?:@(?P<nth>\d+))?$")


@dataclass(frozen=True)
class SwitchPoint:
    """One stop: SYMBOL+offset, its nth hit (or where it returns), then `steps` steps."""

    symbol: str
    offset: int = 0
    nth: int = 1
    at_return: bool = False
    steps: int = 0

    def spec(self) -> str:
        """The --switch-at text (with --step) that names exactly this stop."""
        text = self.symbol + (f"+{self.offset:#x}" if self.offset else "")
        text += ":return" if self.at_return else ""
        text += f"@{self.nth}" if self.nth != 1 else ""
        return text

    def options(self) -> list[str]:
        return ["--switch-at", self.spec()] + (["--step", str(self.steps)] if self.steps else [])


@dataclass(frozen=True)
class SwitchPlan:
    """Which stop each hop uses: one fixed point, a sweep, or a seeded random pick."""

    kind: str                           # "at", "sweep", "random" or "io-error"
    point: SwitchPoint | None = None    # at: every hop; sweep: hop i adds i-1 steps
    symbols: tuple[str, ...] = ()       # random: the candidates
    max_steps: int = 40                 # random: steps drawn from [0, max_steps)
    seed: int = 0

    def for_hop(self, hop: int) -> SwitchPoint:
        if self.kind in ("at", "io-error"):
            assert self.point is not None
            return self.point
        if self.kind == "sweep":
            assert self.point is not None
            return SwitchPoint(self.point.symbol, steps=hop - 1)
        rng = random.Random(f"{self.seed}:{hop}")   # hop by hop: replayable without the others
        return SwitchPoint(rng.choice(self.symbols), steps=rng.randrange(self.max_steps))

    def symbols_used(self) -> tuple[str, ...]:
        if self.kind == "io-error":
            return ()
        return self.symbols if self.kind == "random" else (self.point.symbol,) \
            if self.point else ()


def parse_switch_spec(text: str, steps: int = 0) -> SwitchPlan | SwitchPoint:
    """`--switch-at` text -> a SwitchPoint (fixed), or a random SwitchPlan without seed."""
    text = text.strip()
    if text.startswith("random:"):
        names = tuple(n.strip() for n in text[len("random:"):].split(",") if n.strip())
        bad = [n for n in names if not re.fullmatch(_SYMBOL, n)]
        if not names or bad:
            raise UserError(f"--switch-at {text!r}: random: needs a comma list of kernel "
                            f"function names{f' ({bad[0]!r} is not one)' if bad else ''}",
                            fix="e.g. --switch-at random:ahci_qc_issue,vp_notify")
        return SwitchPlan("random", symbols=names, max_steps=max(steps, 1))
    match = _SPEC.match(text)
    if match is None:
        raise UserError(f"--switch-at {text!r} is not a switch point",
                        fix="give SYMBOL, SYMBOL+OFFSET, SYMBOL@N, SYMBOL:return, "
                            "random:SYM1,SYM2 or io-error:read|write[:DISK], e.g. "
                            "--switch-at ahci_qc_issue+0x10")
    nth = int(match["nth"]) if match["nth"] else 1
    if nth < 1:
        raise UserError(f"--switch-at {text!r}: @N counts hits from 1", fix="use @1 or more")
    if steps < 0:
        raise UserError("--step cannot be negative", fix="give 0 or more single-steps")
    offset = int(match["off"], 0) if match["off"] else 0
    if match["ret"] and offset:
        raise UserError(f"--switch-at {text!r}: :return stops where the function returns "
                        "to, an offset has no meaning there",
                        fix="use SYMBOL:return or SYMBOL+OFFSET")
    return SwitchPoint(match["sym"], offset, nth, bool(match["ret"]), steps)


@dataclass(frozen=True)
class Located:
    """An address named by the guest's symbols: name+offset [module]."""

    address: int
    symbol: str | None
    offset: int
    module: str | None

    def __str__(self) -> str:
        if self.symbol is None:
            return f"{self.address:#x}"
        return f"{self.symbol}+{self.offset:#x}" + (f" [{self.module}]" if self.module else "")


class Kallsyms:
    """The text symbols of one guest's /proc/kallsyms, sorted by address."""

    def __init__(self, text: str):
        rows: list[tuple[int, str, str | None]] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in ("t", "T"):
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else None
            rows.append((int(parts[0], 16), parts[2], module))
        if rows and all(address == 0 for address, _, _ in rows):
            raise UserError("the guest's /proc/kallsyms shows every address as 0 "
                            "(kptr_restrict, or read without CAP_SYSLOG), so no switch "
                            "point can be placed",
                            fix="read it as root with kernel.kptr_restrict=0 (the harness "
                                "guest does), or use a guest kernel that shows addresses")
        rows.sort()
        self._addresses = [r[0] for r in rows]
        self._rows = rows
        self._by_name: dict[str, list[int]] = {}
        for index, (_, name, _) in enumerate(rows):
            self._by_name.setdefault(name, []).append(index)

    def __len__(self) -> int:
        return len(self._rows)

    def _size(self, index: int) -> int:
        address = self._rows[index][0]
        later = bisect.bisect_right(self._addresses, address)
        return (self._addresses[later] - address) if later < len(self._addresses) else 4096

    def function(self, name: str) -> tuple[int, int, str | None]:
        """(address, size, module) of text symbol NAME (size: up to the next symbol)."""
        found = self._by_name.get(name)
        if not found:
            near = difflib.get_close_matches(name, list(self._by_name), n=5)
            raise UserError(f"the guest's kernel has no function {name!r} in /proc/kallsyms "
                            f"({len(self)} text symbols, modules included)"
                            + (f"; similar: {', '.join(near)}" if near else ""),
                            fix="name a function of the running guest kernel or of a loaded "
                                "module (grep -w NAME /proc/kallsyms in the guest)")
        index = found[0]
        return self._rows[index][0], self._size(index), self._rows[index][2]

    def resolve(self, point: SwitchPoint) -> int:
        """The address of POINT's symbol+offset, checked to lie inside the function."""
        address, size, _ = self.function(point.symbol)
        if not 0 <= point.offset < size:
            raise UserError(f"--switch-at {point.spec()}: offset {point.offset:#x} is outside "
                            f"{point.symbol}, which is {size:#x} bytes long (to the next "
                            "symbol)", fix=f"give an offset below {size:#x}")
        return address + point.offset

    def locate(self, address: int) -> Located:
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0:
            return Located(address, None, 0, None)
        base, name, module = self._rows[index]
        if address - base >= self._size(index) and index + 1 >= len(self._rows):
            return Located(address, None, 0, None)
        return Located(address, name, address - base, module)
