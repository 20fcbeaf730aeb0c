"""One known QEMU gap and the evidence its version range rests on (the table of
gaps and the lookups are harness/qemu/known.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UserError
from harness.qemu.facts import (
    Version,
    changes_at_next_release,
    is_development,
    machine_kind_of,
    machine_type_version,
    next_release,
    parse_version,
    show_version,
)
from harness.qemu.ranges import ALWAYS, FirmwareRange, VersionRange
from harness.qemu.signature import Shows, Signature

FAILS = "fails"
PASSES = "passes"
MEASURED = "measured"
INFERRED = "inferred"


@dataclass(frozen=True)
class Measurement:
    """One run of a gap's tests on one QEMU: the evidence a range rests on."""

    qemu: str                  # full version of the binary measured, "7.2.22"
    outcome: str               # FAILS (the gap holds) or PASSES
    machines: tuple[str, ...]  # machine types it ran ("pc", "q35", "pc-q35-7.2")
    note: str = ""             # what was seen, when the reason does not say it
    firmware: str = ""         # for a firmware-keyed gap: "seabios 1.16.2-debian-1.16.2-1"

    def words(self) -> str:
        """"7.2.22 fails (q35)"."""
        return f"{self.qemu} {self.outcome} ({', '.join(self.machines)})"


@dataclass(frozen=True)
class Basis:
    """What a gap's answer for one QEMU version rests on (`KnownGap.basis`)."""

    holds: bool     # the version is inside the range (machine aside)
    kind: str       # MEASURED: this very version is in the evidence; else INFERRED
    words: str      # one sentence for the reports


@dataclass(frozen=True)
class KnownGap:
    """One way QEMU misses a seed item, for the versions it holds for."""

    id: str
    seed: str                          # harness.pytestplugin.seed_index id; the reason starts with it
    does_instead: str                  # what QEMU does instead of the spec behaviour
    spec: str                          # the behaviour it misses (and where it is written)
    versions: VersionRange
    tests: tuple[str, ...]             # test functions under tests/pci that show it
    evidence: tuple[Measurement, ...]
    machines: frozenset[str] = frozenset()   # machine kinds; empty: every machine
    #: A compat property makes the machine type decide (the same binary shows
    #: different config space for pc-q35-7.2 and q35): the gap holds for the
    #: versioned machine types in `machine_types` only.
    compat_property: str | None = None
    machine_types: VersionRange = field(default=ALWAYS)
    #: Where the three-view compare meets the gap (compare --json: known_failures).
    shows: tuple[Shows, ...] = ()
    #: The firmware it also needs (None: any): it holds where both are in range.
    firmware: FirmwareRange | None = None
    #: Seconds the affected phase takes where the gap does not hold (for verdicts).
    usual_s: float | None = None
    #: How the gap's test fails when it is this gap (signature.py); a failure with
    #: another signature is a plain FAIL, never this known failure.
    signature: Signature = field(default=Signature())

    @property
    def reason(self) -> str:
        """The xfail reason: "<item-id>: what QEMU does instead"."""
        return f"{self.seed}: {self.does_instead}"

    def holds(self, qemu_version: Version, machine: str | None = None,
              firmware: tuple[str, str | None] | None = None) -> bool:
        """True when QEMU `qemu_version` running `machine` (a versioned type, or
        None when the test does not say) with FIRMWARE ((family, version), None when
        unknown: then a firmware-keyed gap is not claimed) shows the gap.

        A gap limited to machine kinds or machine types needs the machine: without
        it the answer would be a guess, so that is a UsageError for the caller.
        """
        if qemu_version not in self.versions:
            return False
        if self.firmware is not None and (firmware is None or not self.firmware.holds(*firmware)):
            return False
        if not self.machines and self.compat_property is None:
            return True
        if machine is None:
            raise UserError(f"known gap {self.id} depends on the machine type, and the test "
                            "does not say which it runs",
                            fix="parametrize the test's `machine` (or `topology`) so the "
                                "machine is known at collection")
        if self.machines and machine_kind_of(machine) not in self.machines:
            return False
        if self.compat_property is None:
            return True
        type_version = machine_type_version(machine)
        if type_version is None:
            raise UserError(f"known gap {self.id} depends on the machine type's version "
                            f"({self.compat_property}), and {machine!r} is an alias",
                            fix="resolve the alias with the binary under test first "
                                "(QemuBinary.resolve_machine)")
        return type_version in self.machine_types

    def measured(self) -> str:
        """Every measurement in one line: "7.2.22 fails (q35); 10.0.2 passes (q35)"."""
        ordered = sorted(self.evidence, key=lambda m: (parse_version(m.qemu), m.qemu))
        return "; ".join(m.words() for m in ordered)

    def basis(self, qemu_version: str, machine: str | None = None) -> Basis:
        """Whether QEMU `qemu_version` ("9.1.0") is inside the range, and whether that
        answer was measured on this very version (and machine kind, when given) or
        is inferred from the others."""
        version = parse_version(qemu_version)
        holds = version in self.versions
        same = [m for m in self.evidence if m.qemu == qemu_version]
        kind = machine_kind_of(machine) if machine else None
        kinds = sorted({machine_kind_of(x) or x for m in same for x in m.machines})
        if same and kind is not None and kind not in kinds:
            return Basis(holds, INFERRED, (
                f"inferred: measured on {qemu_version} on {'/'.join(kinds)} only, not {kind} "
                f"(measured: {self.measured()})"))
        bound = next((b for b in (self.versions.introduced, self.versions.fixed)
                      if changes_at_next_release(version, b)), None)
        if bound is not None:
            return Basis(holds, INFERRED, (
                f"inferred: {qemu_version} is a development build on its way to "
                f"{show_version(next_release(version))}, where this gap's range ({self.versions}) "
                f"changes; judged as {show_version(version[:2])} (measured: {self.measured()})"))
        if same:
            outcomes = {m.outcome for m in same}
            machines = sorted({x for m in same for x in m.machines})
            return Basis(holds, MEASURED, (
                f"measured on {qemu_version} ({', '.join(machines)}): "
                f"{'/'.join(sorted(outcomes))}"))
        where = ("a development build, " if is_development(version) else "") + (
            f"inside {self.versions}" if holds else f"outside {self.versions}")
        return Basis(holds, INFERRED, (
            f"inferred: {qemu_version} was not measured ({where}); measured: "
            f"{self.measured()}"))

    def scope(self) -> str:
        """Where it holds, in words: "QEMU before 10.0, q35"."""
        parts = [f"QEMU {self.versions}"]
        if self.firmware is not None:
            parts.append(f"with {self.firmware}")
        if self.machines:
            parts.append("/".join(sorted(self.machines)))
        if self.compat_property is not None:
            parts.append(f"machine types {self.machine_types} ({self.compat_property})")
        return ", ".join(parts)
