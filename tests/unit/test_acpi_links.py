"""ACPI link parsing on decompiled DSDT text (excerpts of QEMU 7.2's q35/pc DSDT)."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.guest.acpi import decompile, interrupt_links, prt_links

Q35 = """
    Scope (_SB.PCI0)
    {
        Name (PRTP, Package (0x80)
        {
            Package (0x04) { 0xFFFF, Zero, LNKE, Zero },
        })
        Name (PRTA, Package (0x80)
        {
            Package (0x04) { 0xFFFF, Zero, GSIE, Zero },
        })
        Method (_PRT, 0, NotSerialized)  // _PRT: PCI Routing Table
        {
            If ((PICF == Zero)) { Return (PRTP) /* \\_SB_.PCI0.PRTP */ }
            Else { Return (PRTA) }
        }
    }
    Scope (_SB)
    {
        Method (IQCR, 1, Serialized)
        {
            Name (PRR0, ResourceTemplate ()
            {
                Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, _Y00)
                {
                    0x00000000,
                }
            })
            Return (PRR0)
        }
        Device (LNKE)
        {
            Name (_HID, EisaId ("PNP0C0F") /* PCI Interrupt Link Device */)  // _HID
            Name (_UID, 0x04)
            Name (_PRS, ResourceTemplate ()
            {
                Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, )
                {
                    0x00000005,
                    0x0000000A,
                    0x0000000B,
                }
            })
            Method (_CRS, 0, NotSerialized)
            {
                Return (IQCR (PRQE))
            }
        }
        Device (GSIE)
        {
            Name (_HID, EisaId ("PNP0C0F"))
            Name (_UID, 0x14)
            Name (_PRS, ResourceTemplate ()
            {
                Interrupt (ResourceConsumer, Level, ActiveLow, Exclusive, ,, )
                {
                    0x00000014,
                }
            })
        }
        Device (LNKS)
        {
            Name (_HID, EisaId ("PNP0C0F"))
            Name (_PRS, ResourceTemplate ()
            {
                Interrupt (ResourceConsumer, Level, ActiveHigh, Shared, ,, ) { 0x00000009, }
            })
        }
        Device (RTC)
        {
            Name (_HID, EisaId ("PNP0B00"))
            Name (_CRS, ResourceTemplate ()
            {
                Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000008, }
            })
        }
    }
"""


def test_links_and_their_descriptors():
    links = {link.name: link for link in interrupt_links(Q35)}
    assert sorted(links) == ["GSIE", "LNKE", "LNKS"]          # RTC is not PNP0C0F
    lnke = links["LNKE"]
    assert lnke.uid == "0x04"
    assert [(d.where, d.declaration, d.interrupts) for d in lnke.descriptors] == [
        ("_PRS", "Level, ActiveHigh, Shared", (5, 10, 11)),
        ("_CRS via IQCR", "Level, ActiveHigh, Shared", (0,))]
    gsie = links["GSIE"].descriptors
    assert [(d.polarity, d.sharing, d.interrupts) for d in gsie] == [
        ("ActiveLow", "Exclusive", (0x14,))]


def test_describe_shows_the_exact_declarations():
    text = {link.name: link.describe() for link in interrupt_links(Q35)}["LNKE"]
    assert text == ("LNKE: _PRS: Interrupt (Level, ActiveHigh, Shared) {5, 10, 11}; "
                    "_CRS via IQCR: Interrupt (Level, ActiveHigh, Shared) {0}")


def test_prt_links_are_the_pci_links_only():
    # LNKS (pc's SCI link) is a PNP0C0F device but no routing table names it.
    assert prt_links(Q35) == frozenset({"LNKE", "GSIE"})


def test_decompile_without_iasl_is_a_user_error():
    with pytest.raises(UserError, match="acpica-tools"):
        decompile(b"DSDT", iasl="iasl-that-does-not-exist")
