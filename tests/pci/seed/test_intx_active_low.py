"""intx-active-low: PCI INT#x should be active-low, and the DSDT should say so.

The guest's own DSDT (the table its OS obeys) is decompiled with iasl and every
PCI interrupt link the routing tables refer to is read.  PCI's INTA#-INTD# are
active-low, level-triggered, shareable signals (PCI Local Bus spec 2.2.6), so
each link's descriptors must read `Level, ActiveLow, Shared`.
"""

from __future__ import annotations

import pytest

from harness.guest.acpi import decompile, fetch_table, interrupt_links, prt_links

# Links each machine's _PRT uses: pc LNKA-D; q35 LNKA-H (PIC mode) and GSIA-H (APIC).
MIN_LINKS = {"pc": 4, "q35": 16}


@pytest.mark.seed("intx-active-low")
@pytest.mark.known_gap("intx-declared-active-high")
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_pci_interrupt_links_are_active_low(machine, guest, artifacts):
    dsl = decompile(fetch_table(guest, "DSDT"), artifacts)
    routed = prt_links(dsl)
    links = [link for link in interrupt_links(dsl) if link.name in routed]
    # Preconditions (a real failure, not the known gap): the table has the links.
    if len(links) < MIN_LINKS[machine] or any(not link.descriptors for link in links):
        raise RuntimeError(f"DSDT of {machine}: expected >= {MIN_LINKS[machine]} PCI links with "
                           f"descriptors, found {[link.describe() for link in links]}")
    wrong = [link.describe() for link in links
             if any(d.polarity != "ActiveLow" or d.mode != "Level" for d in link.descriptors)]
    assert not wrong, ("PCI interrupt links not declared Level, ActiveLow (the DSDT says):\n  "
                       + "\n  ".join(wrong))
