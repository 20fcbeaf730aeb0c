"""pc's PIRQ steering: which ISA IRQ each PIIX link drives, and paired links told apart.

On pc the firmware steers PIRQA-D through the PIIX3 ISA bridge's PIRQRC
registers (config 0x60-0x63 of 00:01.0, the machine fact `pirq_steering`):
SeaBIOS puts A and B on IRQ 10, C and D on 11.  A device whose INT#x QEMU
swizzled to the wrong link of a pair then still arrives on the right IRQ, and a
check by IRQ cannot see it.  So before the probes the stress moves every link
that shares an IRQ with a link the model uses, and that no device here uses,
to an IRQ of its own from the links' _PRS choices: then the IO-APIC pin a
device's interrupts arrive on names its link exactly.

It is safe only when the shared IRQ serves the stress devices alone (their
model puts them all on the used links, so the partner link has no user); when
another driver shares the IRQ, its link is unknown and the pair stays
together, reported as a routing check that cannot be made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from harness.scenarios.intx.topology import LINK_NAMES

LINKS = 4   # PIIX3: PIRQA-D
DISABLED = 0x80


def parse_steering(register: int) -> dict[int, int | None]:
    """PIRQRC[A-D] read as one 32-bit value (A in the low byte) -> {link: IRQ or None
    when routing is disabled}."""
    out: dict[int, int | None] = {}
    for link in range(LINKS):
        byte = (register >> (8 * link)) & 0xFF
        out[link] = None if byte & DISABLED else byte & 0x0F
    return out


@dataclass(frozen=True)
class Separation:
    moves: dict[int, int]        # {partner link: the IRQ it is steered to now}
    steering: dict[int, int | None]  # every link's IRQ after the moves
    unseparated: tuple[str, ...]     # why a pair stays together


def plan_separation(steering: Mapping[int, int | None], used: Iterable[int],
                    choices: Mapping[int, tuple[int, ...]],
                    others_on: Mapping[int, str]) -> Separation:
    """New IRQs for the links that share an IRQ with a used link and carry no device.

    `choices`: each link's _PRS interrupts; `others_on`: {IRQ: the handlers of
    drivers other than the stress devices on that line}.
    """
    used = sorted(set(used))
    taken = {steering[u] for u in used if steering.get(u) is not None}
    after = dict(steering)
    moves: dict[int, int] = {}
    unseparated: list[str] = []
    for link in range(LINKS):
        irq = steering.get(link)
        if link in used or irq is None or irq not in taken:
            continue
        partners = "/".join(f"PIRQ{LINK_NAMES[u]}" for u in used if steering.get(u) == irq)
        if irq in others_on:
            unseparated.append(f"PIRQ{LINK_NAMES[link]} and {partners} are both steered to "
                               f"IRQ {irq}, which also serves {others_on[irq]} (a device of "
                               "unknown link): a swizzle error between them cannot be seen")
            continue
        free = [c for c in choices.get(link, ()) if c not in taken and c != irq]
        if not free:
            unseparated.append(f"PIRQ{LINK_NAMES[link]} and {partners} are both steered to "
                               f"IRQ {irq} and its _PRS {list(choices.get(link, ()))} offers no "
                               "other IRQ: a swizzle error between them cannot be seen")
            continue
        moves[link] = after[link] = free[0]
    return Separation(moves, after, tuple(unseparated))


def link_mismatch(device: str, link: int, pin: int,
                  steering: Mapping[int, int | None]) -> str | None:
    """None when INT#x of the model's `link` arrived on its steered IRQ `pin`; else
    which link that pin is the route of."""
    want = steering.get(link)
    if want == pin:
        return None
    routes = [f"PIRQ{LINK_NAMES[x]}" for x, irq in sorted(steering.items()) if irq == pin]
    of = f", the route of {'/'.join(routes)}" if routes else ", the route of no PIRQ link"
    return (f"{device}: its INT#x arrived on IO-APIC pin {pin}{of}; the model's swizzle says "
            f"PIRQ{LINK_NAMES[link]}, which PIIX steers to IRQ {want}")
