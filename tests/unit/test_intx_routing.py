"""INT#x routing model, topology layout and counter parsing (no QEMU).

Route vectors were observed on QEMU 7.2 under TCG (guest sysfs irq and HMP
`info irq`): q35 pci-bridge at root slot 4, a second one at slot 1 behind it,
virtio-blk at slot 4 behind that -> GSI 21 (PIRQF); the same chain on pc ->
PIRQA (PIRQRC A = IRQ 10).  On pc the line is the OS's choice among the link's
_PRS interrupts: check_probe learns it from QEMU's IO-APIC pin, not from the
register the guest programmed.
"""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.guest.functions import GuestFunction
from harness.scenarios.intx.stress import (
    IntxRoute,
    IntxStress,
    ProbeResult,
    _io_counts,
    intx_route,
    parse_info_irq,
    parse_proc_interrupts,
    root_link,
    shared_line_layout,
    swizzle,
)
from harness.topology import topology_from_dict
from harness.topology.placement import resolve
from harness.topology.tree import path_of


def test_swizzle_is_the_bridge_rule():
    # PCI-to-PCI Bridge spec table 9-1: device 0 keeps its pin, device 1 shifts by one...
    assert [swizzle(1, s) for s in range(5)] == [1, 2, 3, 4, 1]
    assert [swizzle(p, 3) for p in (1, 2, 3, 4)] == [4, 1, 2, 3]


def test_root_links_per_chipset():
    assert [root_link("pc", s, 1) for s in (1, 2, 3, 4, 5)] == [0, 1, 2, 3, 0]
    assert [root_link("q35", s, 1) for s in (0, 1, 2, 3, 4)] == [4, 5, 6, 7, 4]
    with pytest.raises(UserError):
        root_link("q35", 0x1E, 1)


def _chain(machine):
    return topology_from_dict({"machine": machine, "device": [
        {"id": "br1", "driver": "pci-bridge", "addr": "4.0"},
        {"id": "br2", "driver": "pci-bridge", "bus": "br1", "addr": "1.0"},
        {"id": "d1", "driver": "virtio-blk-pci", "bus": "br2", "addr": "4.0", "disk": "16M"},
        {"id": "e1", "driver": "e1000", "bus": "br1", "addr": "5.0"}]})


@pytest.mark.parametrize("machine,link", [("q35", 5), ("pc", 0)])
def test_observed_routes(machine, link):
    route = intx_route(_chain(machine), "d1")
    assert route.pins == (1, 1, 2)
    assert (route.root_slot, route.link) == (4, link)
    assert intx_route(_chain(machine), "br1").pins == (1,)


def test_q35_observed_bridges_and_devices():
    # Observed: 00:04.0 -> GSI 20, 04:01.0 -> GSI 21; e1000 at br1 slot 5 leaves it as INTB.
    topo = _chain("q35")
    assert 16 + intx_route(topo, "br1").link == 20
    assert 16 + intx_route(topo, "br2").link == 21
    assert intx_route(topo, "e1").pins == (1, 2)


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("depths", [[0, 0, 0], [2, 2, 2, 2], [0, 1, 2, 3], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]])
def test_layout_puts_every_device_on_one_link(machine, depths):
    layout = shared_line_layout(machine, depths)
    topo = resolve(layout.topology)
    links, seen_depths = set(), []
    for dev in layout.devices:
        path = path_of(topo, topo.device(dev.id))
        seen_depths.append(len(path) - 1)
        # Independent recomputation straight from the path strings.
        pin = 1
        for part in reversed(path[1:]):
            pin = (pin - 1 + int(part.split(".")[0], 16)) % 4 + 1
        slot = int(path[0].split(".")[0], 16)
        links.add((slot - 1 + pin - 1) % 4 if machine == "pc" else (slot + pin - 1) % 4 + 4)
        device = topo.device(dev.id)
        assert ("vectors", 0) in device.props
    assert links == {layout.link}
    assert seen_depths == depths
    nets = [d for d in layout.devices if d.kind == "net"]
    assert len(layout.netdevs) == len(nets)
    assert len({d.subnet for d in nets}) == len(nets)


def test_layout_rejects_nonsense():
    with pytest.raises(UserError):
        shared_line_layout("q35", [])
    with pytest.raises(UserError):
        shared_line_layout("q35", [-1])


PROC_INTERRUPTS = """           CPU0       CPU1
  0:        127          3   IO-APIC   2-edge      timer
 21:        106         10   IO-APIC  21-fasteoi   virtio1, virtio2
 25:          5          0   PCI-MSI 491520-edge      virtio0-config
NMI:          0          0   Non-maskable interrupts
"""

INFO_IRQ = """IRQ statistics for ioapic:
 0: 1
 4: 482
21: 100
IRQ statistics for isa-i8259:
 0: 1
 4: 482
"""


def test_counter_parsers():
    irqs = parse_proc_interrupts(PROC_INTERRUPTS)
    assert irqs[21][:2] == (116, "IO-APIC") and irqs[21][2].endswith("virtio1, virtio2")
    assert irqs[25][1] == "PCI-MSI"
    assert parse_info_irq(INFO_IRQ) == {0: 1, 4: 482, 21: 100}
    assert parse_info_irq(INFO_IRQ, "isa-i8259") == {0: 1, 4: 482}
    stat = "blk vda 10 0 80 5 20 0 160 7 0 12 12 0 0 0 0\nnet eth1 30 12\n"
    assert _io_counts(stat) == {"vda": 30, "eth1": 42}


def _pc_stress(guest_irq: int) -> IntxStress:
    """An IntxStress for one pc device on PIRQA whose DSDT offers LNKA {5, 10, 11};
    what a guest and QEMU would have said is set directly (no QEMU here)."""
    stress = IntxStress.__new__(IntxStress)
    stress.fns = {"d1": GuestFunction(("04.0",), "0000:00:04.0", guest_irq)}
    stress.routes = {"d1": IntxRoute("d1", (1,), 4, 0)}
    stress.expected = {}
    stress._choices = {0: (5, 10, 11)}
    stress.steering = None   # the exact-link check has its own tests below
    return stress


def test_pc_line_comes_from_the_ioapic_pin_and_matches_the_guest() -> None:
    stress = _pc_stress(guest_irq=10)
    assert stress.check_probe(ProbeResult("d1", 6, {2: 40, 10: 6})) == []
    assert stress.expected == {"d1": 10}


def test_pc_guest_irq_other_than_the_pin_qemu_delivers_on_is_reported() -> None:
    stress = _pc_stress(guest_irq=11)
    assert stress.check_probe(ProbeResult("d1", 6, {10: 6})) == [
        "d1: the guest handles its INT#x as IRQ 11, QEMU delivered it on IO-APIC pin 10"]


def test_pc_pin_outside_the_links_prs_is_reported() -> None:
    stress = _pc_stress(guest_irq=9)
    assert stress.check_probe(ProbeResult("d1", 6, {9: 6})) == [
        ("d1: QEMU delivered its INT#x on IO-APIC pin 9, not one of the DSDT's _PRS "
        "interrupts for LNKA: [5, 10, 11]")]


# SeaBIOS's PIIX steering (setpci -s 00:01.0 60.L): A, B -> 10, C, D -> 11.
SEABIOS_STEERING = 0x0B0B0A0A


def test_piix_steering_register_reads_per_link():
    from harness.scenarios.intx.steering import parse_steering

    assert parse_steering(SEABIOS_STEERING) == {0: 10, 1: 10, 2: 11, 3: 11}
    assert parse_steering(0x800B0A05) == {0: 5, 1: 10, 2: 11, 3: None}


def test_the_partner_of_a_used_link_gets_an_irq_of_its_own():
    from harness.scenarios.intx.steering import parse_steering, plan_separation

    plan = plan_separation(parse_steering(SEABIOS_STEERING), {0},
                           {link: (5, 10, 11) for link in range(4)}, {})
    assert plan.moves == {1: 5} and plan.unseparated == ()
    assert plan.steering == {0: 10, 1: 5, 2: 11, 3: 11}
    # Used C: D leaves 11 (5 is the first choice neither A/B's 10 nor 11 takes).
    assert plan_separation(parse_steering(SEABIOS_STEERING), {2},
                           {link: (5, 10, 11) for link in range(4)}, {}).moves == {3: 5}


def test_a_pair_that_shares_its_irq_with_another_driver_stays_and_says_so():
    from harness.scenarios.intx.steering import parse_steering, plan_separation

    plan = plan_separation(parse_steering(SEABIOS_STEERING), {0},
                           {link: (5, 10, 11) for link in range(4)}, {10: "ata_piix"})
    assert plan.moves == {}
    assert plan.unseparated == (
        ("PIRQB and PIRQA are both steered to IRQ 10, which also serves ata_piix (a device of "
        "unknown link): a swizzle error between them cannot be seen"),)


def test_a_swizzle_error_between_paired_links_is_named():
    """QEMU swizzles a device the model puts on PIRQA to PIRQB.  With SeaBIOS's
    steering both are IRQ 10 and the old check (a _PRS choice, the guest's IRQ)
    passed; separated, its interrupts arrive on B's IRQ 5 and the link is named."""
    stress = _pc_stress(guest_irq=10)
    stress.steering = {0: 10, 1: 5, 2: 11, 3: 11}
    assert stress.check_probe(ProbeResult("d1", 0, {5: 6}, "dd did not finish")) == [
        "d1: its I/O did not complete: dd did not finish",
        "d1: its line IRQ 10 did not count any interrupt while it alone did I/O",
        ("d1: its INT#x arrived on IO-APIC pin 5, the route of PIRQB; the model's swizzle "
         "says PIRQA, which PIIX steers to IRQ 10"),
        "d1: the guest handles its INT#x as IRQ 10, QEMU delivered it on IO-APIC pin 5"]
    # Not separated (the old steering), the same error is invisible: that is why.
    stress = _pc_stress(guest_irq=10)
    stress.steering = {0: 10, 1: 10, 2: 11, 3: 11}
    assert stress.check_probe(ProbeResult("d1", 6, {10: 6})) == []


def test_the_right_link_on_its_separated_irq_passes():
    stress = _pc_stress(guest_irq=10)
    stress.steering = {0: 10, 1: 5, 2: 11, 3: 11}
    assert stress.check_probe(ProbeResult("d1", 6, {10: 6})) == []
