"""The facts table and the probed-facts cache, without QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.qemu import facts, machines, probe
from harness.qemu.binary import QemuBinary
from harness.qemu.facts import (
    FILE_MIGRATION_URI,
    NATIVE_SECOND_UNPLUG_REFUSALS,
    PORT_LINK_SPEEDS,
    Q35_ACPI_BRIDGE_HOTPLUG,
    VERSIONED_FACTS,
    FactChange,
    VersionedFact,
    machine_fact,
    parse_version,
)
from harness.qemu.machines import machine_facts
from harness.qemu.probe import BusProbe, ProbedFacts


def test_versions_are_read_from_binaries_and_machine_types() -> None:
    assert parse_version("7.2.22") == (7, 2, 22)
    assert parse_version("10.0.2") == (10, 0, 2)
    assert parse_version("10.1.50") == (10, 1, 50), "a development build keeps its micro"
    assert parse_version("pc-q35-8.1") == (8, 1)
    with pytest.raises(UserError, match="no QEMU version in 'master'"):
        parse_version("master")
    assert facts.machine_type_version("pc-q35-4.0.1") == (4, 0)
    assert facts.machine_type_version("q35") is None
    assert facts.machine_kind_of("pc-i440fx-10.0") == "pc"
    assert facts.machine_kind_of("virt") is None


def test_a_fact_takes_the_value_of_its_latest_change_at_or_before_the_version() -> None:
    fact: VersionedFact[str] = VersionedFact("x", "qemu", "a test fact", (
        FactChange((0, 0), "old", "-"), FactChange((8, 0), "new", "-"), FactChange((9, 1), "newer", "-")))
    assert [fact.at(v) for v in [(7, 2), (8, 0), (8, 2), (9, 0), (9, 1), (10, 0)]] == \
        ["old", "new", "new", "new", "newer", "newer"]
    assert fact.changed_in() == (9, 1)
    assert fact.differs((7, 2), (10, 0)) and not fact.differs((9, 1), (10, 0))


def test_the_measured_differences_between_the_reference_binaries() -> None:
    old, new = (7, 2), (10, 0)
    # Not a version difference (timing): both texts on both binaries.
    assert NATIVE_SECOND_UNPLUG_REFUSALS.at(old) == NATIVE_SECOND_UNPLUG_REFUSALS.at(new)
    assert NATIVE_SECOND_UNPLUG_REFUSALS.changed_in() is None
    # SHPC: 7.2 passes a second device_del on (the guest cancels), 8.0+ refuses it.
    assert facts.SHPC_SECOND_UNPLUG_REFUSAL.at(old) is None
    assert facts.SHPC_SECOND_UNPLUG_REFUSAL.at(new) == "guest is busy (power indicator blinking)"
    assert FILE_MIGRATION_URI.at(old) is False and FILE_MIGRATION_URI.at(new) is True
    assert PORT_LINK_SPEEDS.at(old) == ("2_5", "5", "8", "16")
    assert PORT_LINK_SPEEDS.at(new)[-2:] == ("32", "64")


def test_every_fact_is_ordered_starts_at_zero_and_says_how_it_was_checked() -> None:
    names = set()
    for fact in VERSIONED_FACTS:
        assert fact.history[0].since == (0, 0), fact.name
        sinces = [c.since for c in fact.history]
        assert sinces == sorted(sinces) and len(set(sinces)) == len(sinces), fact.name
        assert all(c.evidence for c in fact.history), fact.name
        assert fact.name not in names
        names.add(fact.name)


def test_machine_type_facts_follow_the_machine_type_not_the_binary() -> None:
    # The same 10.0 binary: pc-q35-6.0 has no ACPI bridge hotplug, q35 (= 10.0) has.
    assert machine_fact(Q35_ACPI_BRIDGE_HOTPLUG, "pc-q35-6.0", (10, 0)) is False
    assert machine_fact(Q35_ACPI_BRIDGE_HOTPLUG, "q35", (10, 0)) is True
    assert machine_fact(facts.DEVCAP_EXT_TAG, "pc-q35-7.2", (10, 0)) is False
    assert machine_fact(facts.DEVCAP_EXT_TAG, "pc-q35-10.0", (10, 0)) is True
    with pytest.raises(ValueError, match="keyed by the QEMU version"):
        machine_fact(FILE_MIGRATION_URI, "q35", (10, 0))


def test_machine_kinds_are_data() -> None:
    q35, pc = machine_facts("pc-q35-7.2"), machine_facts("pc")
    assert (q35.root_bus, q35.express, q35.acpi_mechanism) == ("pcie.0", True, "acpi-pcihp")
    assert (pc.root_bus, pc.express, pc.acpi_mechanism) == ("pci.0", False, "acpi-bsel")
    assert machines.MGMT_SLOT not in q35.builtin and 0x1F in q35.builtin and 1 in pc.builtin
    assert q35.bridge_acpi((6, 0), True) is False and q35.bridge_acpi((6, 1), True) is True
    assert q35.bridge_acpi(None, False) is False and pc.bridge_acpi((2, 4), True) is True
    with pytest.raises(UserError, match="unknown machine type 'virt'"):
        machine_facts("virt")


def _probed(version: str = "10.0.2") -> ProbedFacts:
    return ProbedFacts(
        version=version, aliases=(("pc", "pc-i440fx-10.0"), ("q35", "pc-q35-10.0")),
        machine_types=("pc-i440fx-10.0", "pc-q35-10.0", "pc-q35-7.2"), deprecated=("pc-q35-7.0",),
        native_hotplug_property=("x-do-not-expose-native-hotplug-cap", True),
        port_link_speeds=("2_5", "5", "8", "16", "32", "64"), file_migration_uri=True,
        buses=(BusProbe("q35", "root", True, False, "Bus 'pcie.0' does not support hotplugging",
                        "ICH9-LPC"),
               BusProbe("q35", "root-port", True, True, None, "ICH9-LPC")))


def test_probed_facts_survive_the_json_cache_and_answer_by_bus_kind() -> None:
    probed = _probed()
    again = ProbedFacts.from_json(probed.to_json())
    assert again == probed
    assert again.resolve_alias("q35") == "pc-q35-10.0"
    assert again.resolve_alias("pc-q35-7.2") == "pc-q35-7.2"
    # The QOM link names a handler on pcie.0, the behaviour says no: behaviour wins.
    assert again.bus("q35", "root").qom_handler_type == "ICH9-LPC"
    assert again.hotplug_accepted("q35", "root") is False
    assert again.hotplug_accepted("q35", "root-port") is True
    with pytest.raises(KeyError, match="no probe for pci-bridge on pc"):
        again.bus("pc", "pci-bridge")


def test_probe_runs_once_per_binary_identity(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n")
    binary = QemuBinary(qemu, "10.0.2", "QEMU emulator version 10.0.2", frozenset())
    monkeypatch.setenv("PCI_HARNESS_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []

    def fake_probe(b: QemuBinary) -> ProbedFacts:
        calls.append(b.version)
        return _probed(b.version)

    monkeypatch.setattr(probe, "probe", fake_probe)
    probe.probed_facts.cache_clear()
    first = probe.probed_facts(binary)
    probe.probed_facts.cache_clear()  # a new process: only the disk cache remains
    assert probe.probed_facts(binary) == first and calls == ["10.0.2"]
    # A replaced binary (other size/mtime) is probed again.
    qemu.write_text("#!/bin/sh\n# rebuilt\n")
    probe.probed_facts.cache_clear()
    probe.probed_facts(binary)
    assert calls == ["10.0.2", "10.0.2"]
    probe.probed_facts.cache_clear()


def test_the_factory_pins_an_alias_to_the_binarys_versioned_type() -> None:
    from harness.factory import pin_alias
    from harness.topology import topology_from_dict
    from harness.topology.expect import port_link_cap

    probed = _probed()
    topo = topology_from_dict({"machine": "q35", "device": [
        {"id": "rp1", "driver": "pcie-root-port"}]})
    pinned = pin_alias(topo, probed)
    assert pinned.machine == "pc-q35-10.0" and pinned.devices == topo.devices
    assert pin_alias(pinned, probed) is pinned  # a versioned type stays what it is
    old = pin_alias(topology_from_dict({"machine": "pc-q35-7.2"}), probed)
    assert old.machine == "pc-q35-7.2"
    # Pinned, the machine type's compat rules apply: pc-q35-3.1 keeps 2.5 GT/s x1 ports.
    legacy = pin_alias(topology_from_dict({"machine": "pc-q35-3.1", "device": [
        {"id": "rp1", "driver": "pcie-root-port"}]}), probed)
    assert port_link_cap(legacy, legacy.devices[0]) == (2.5, 1)
    assert port_link_cap(pinned, pinned.devices[0]) == (16.0, 32)
    assert pinned.cache_key() != topo.cache_key()  # the snapshot key names the pinned type


@pytest.mark.parametrize("text, development, after, before", [
    ("10.1.50", True, (10, 1, 3), (10, 2, 0)),   # master after 10.1, on its way to 10.2
    ("9.2.50", True, (9, 2, 4), (10, 0, 0)),     # x.2 is followed by x+1.0
    ("10.1.2", False, (10, 1, 1), (10, 1, 50)),
])
def test_a_development_build_sits_between_its_release_and_the_next(text, development, after,
                                                                     before):
    version = parse_version(text)
    assert facts.is_development(version) is development
    assert after < version < before, f"{version} not between {after} and {before}"
    if development:
        assert facts.next_release(version) == before[:2]


def test_a_fact_changing_at_the_next_release_is_inferred_for_a_development_build() -> None:
    fact: VersionedFact[str] = VersionedFact("x", "qemu", "a test fact", (
        FactChange((0, 0), "old", "-"), FactChange((10, 2), "new", "-")))
    dev = parse_version("10.1.50")
    assert fact.at(dev) == "old", "judged with its release's answer"
    note = fact.inferred_for(dev)
    assert note == ("x: 10.1.50 is a development build on its way to 10.2, where this fact "
                    "changes to 'new'; the table's answer 'old' is inferred (not probed: run "
                    "the test that shows it)"), note
    assert fact.inferred_for(parse_version("10.1.2")) is None, "a release is not inferred"
    assert fact.inferred_for(parse_version("10.0.50")) is None, "changes two releases on"
    assert fact.inferred_for(parse_version("10.2.50")) is None, "already past the change"


def test_development_notes_name_the_facts_that_change_at_the_next_release() -> None:
    # FILE_MIGRATION_URI changes at 8.2 (probed); SHPC's refusal at 8.0 (table only).
    notes = facts.development_notes(parse_version("8.1.50"))
    assert [n.split(":")[0] for n in notes] == ["file-migration-uri"], notes
    assert "probed on the binary" in notes[0], notes
    notes = facts.development_notes(parse_version("7.2.50"))
    names = [n.split(":")[0] for n in notes]
    assert "shpc-second-unplug-refusal" in names and "native-hotplug-property" in names, names
    assert facts.development_notes(parse_version("10.0.2")) == []
