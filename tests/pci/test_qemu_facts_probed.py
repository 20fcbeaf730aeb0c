"""The facts table against the binary under test: each fact that changed between
QEMU versions is asserted with *this* binary's own value (run the module with
--qemu-binary for each QEMU; nothing here is skipped for one of them).

The probe (harness/qemu/probe.py) is run fresh here, on paused throwaway
machines, and compared with the table entry for the binary's version: a table
that goes stale for a new QEMU fails here, not in a confusing verdict later.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.factory import GuestFactory
from harness.qemu import facts, machines
from harness.qemu.facts import VersionedFact, parse_version
from harness.qemu.probe import ProbedFacts, probe

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def probed(harness_factory: GuestFactory) -> ProbedFacts:
    return probe(harness_factory.binary)


# (table fact, how to read the same fact from the probe)
PROBED: list[tuple[VersionedFact[object], Callable[[ProbedFacts], object]]] = [
    (facts.FILE_MIGRATION_URI, lambda p: p.file_migration_uri),  # type: ignore[list-item]
    (facts.NATIVE_HOTPLUG_PROPERTY, lambda p: p.native_hotplug_property),  # type: ignore[list-item]
    (facts.PORT_LINK_SPEEDS, lambda p: p.port_link_speeds),  # type: ignore[list-item]
    (facts.Q35_ROOT_BUS_QOM_HANDLER,  # type: ignore[list-item]
     lambda p: p.bus("q35", "root", acpi=True).qom_handler_type),
    (facts.HOTPLUG_OFF_PORT_QOM_HANDLER,  # type: ignore[list-item]
     lambda p: p.bus("q35", "root-port-hotplug-off", acpi=True).qom_handler_type),
    (facts.HOTPLUG_OFF_PORT_REFUSAL,  # type: ignore[list-item]
     lambda p: (p.bus("q35", "root-port-hotplug-off", acpi=False).refusal or "")
     .replace("b_rpoff", "{bus}").rstrip(".")),
]


@pytest.mark.parametrize(("fact", "read"), PROBED, ids=[f.name for f, _ in PROBED])
def test_the_binary_shows_the_tables_value_for_its_version(
        fact: VersionedFact[object], read: Callable[[ProbedFacts], object],
        probed: ProbedFacts, harness_factory: GuestFactory) -> None:
    version = parse_version(harness_factory.binary.version)
    expected = fact.at(version)
    if fact.inferred_for(version):  # a development build may already carry the next change
        allowed = (expected, fact.at(facts.next_release(version)))
        assert read(probed) in allowed, (
            f"{fact.name} on development build {harness_factory.binary.version}: the binary "
            f"says {read(probed)!r}, the table says one of {allowed!r}")
        return
    assert read(probed) == expected, (
        f"{fact.name} on QEMU {harness_factory.binary.version}: the binary says "
        f"{read(probed)!r}, the table says {expected!r} (changed in {fact.changed_in()})")


def test_aliases_pin_to_the_binarys_own_machine_type(probed: ProbedFacts,
                                                     harness_factory: GuestFactory) -> None:
    version = parse_version(harness_factory.binary.version)
    # A development build (10.1.50) already offers the next release's machine types.
    major, minor = facts.next_release(version) if facts.is_development(version) else version[:2]
    assert probed.resolve_alias("q35") == f"pc-q35-{major}.{minor}", probed.aliases
    assert probed.resolve_alias("pc") == f"pc-i440fx-{major}.{minor}", probed.aliases
    # The binary's -machine help agrees with query-machines.
    assert harness_factory.binary.resolve_machine("q35") == probed.resolve_alias("q35")
    assert "pc-q35-7.2" in probed.machine_types  # both reference binaries offer it


@pytest.mark.parametrize("acpi", [True, False], ids=["acpi", "no-acpi"])
def test_hotplug_is_judged_by_behaviour_not_by_the_qom_link(probed: ProbedFacts,
                                                            acpi: bool) -> None:
    """What device_add does per bus kind is the same on 7.2.22 and 10.0.2, although
    the QOM links differ (above): the behaviour the harness expects holds."""
    for kind, machine in machines.MACHINES.items():
        root = probed.bus(kind, "root", acpi)
        assert root.accepts_device_add is (machine.root_hotplug != "none"), root
    assert probed.bus("q35", "root", acpi).refusal == "Bus 'pcie.0' does not support hotplugging"
    assert probed.hotplug_accepted("q35", "root-port", acpi)
    assert not probed.hotplug_accepted("q35", "root-port-hotplug-off", acpi)
    assert probed.hotplug_accepted("q35", "pcie-pci-bridge", acpi)
    # A bridge without SHPC is hot-plugged only through ACPI.
    assert probed.hotplug_accepted("q35", "pci-bridge-shpc-off", acpi) is acpi
    assert probed.hotplug_accepted("pc", "pci-bridge-shpc-off", acpi) is acpi
