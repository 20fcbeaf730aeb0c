"""The known gaps as the reports show them: which versions were measured, and
whether each run's answer rests on a measurement of that very QEMU or is inferred.

A gap's range (harness/qemu/known.py) covers versions nobody ran: `fixed=(10, 0)`
takes in 8.0-9.2, an open end every future QEMU.  A known failure on such a
version is an inference, and a reader deciding whether a green or yellow cell can
be trusted needs to see that.  A development build (10.1.50) gets the same note
for every fact and gap that changes at the release it is heading for
(harness/qemu/facts.py `development_notes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from harness.errors import UserError
from harness.qemu.facts import development_notes, parse_version
from harness.qemu.gap import Basis, KnownGap
from harness.qemu.known import KNOWN_GAPS


@dataclass(frozen=True)
class RunBasis:
    """One gap on one run's QEMU."""

    run: str            # the run's label
    qemu_version: str
    holds: bool
    kind: str           # "measured" / "inferred"
    words: str


@dataclass(frozen=True)
class GapRow:
    """One known gap: its range, its measurements and its answer per run."""

    id: str
    seed: str
    versions: str       # "7.2 to before 10.0"
    scope: str          # "QEMU 7.2 to before 10.0, q35"
    measured: str       # "7.2.22 fails (q35); 10.0.2 passes (q35)"
    runs: tuple[RunBasis, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _basis(gap: KnownGap, qemu_version: str, machine: str | None = None) -> Basis | None:
    try:
        return gap.basis(qemu_version, machine)
    except UserError:  # a run without a version (pytest never started)
        return None


def gap_rows(runs: Sequence[tuple[str, str]],
             gaps: Sequence[KnownGap] = KNOWN_GAPS) -> list[GapRow]:
    """A row per known gap for runs given as (label, QEMU version)."""
    rows = []
    for gap in gaps:
        per_run = []
        for label, version in runs:
            basis = _basis(gap, version)
            if basis is not None:
                per_run.append(RunBasis(label, version, basis.holds, basis.kind, basis.words))
        rows.append(GapRow(gap.id, gap.seed, str(gap.versions), gap.scope(), gap.measured(),
                           tuple(per_run)))
    return rows


def failure_basis(gap_id: str | None, qemu_version: str | None,
               machine: str | None) -> Basis | None:
    """The basis of one known failure (a test's gap on its QEMU and machine)."""
    gap = next((g for g in KNOWN_GAPS if g.id == gap_id), None)
    if gap is None or not qemu_version:
        return None
    return _basis(gap, qemu_version, machine)


def run_notes(qemu_version: str) -> list[str]:
    """What is inferred about this QEMU as a whole: for a development build, the
    facts that change at the release it heads for ([] for a release)."""
    try:
        return development_notes(parse_version(qemu_version))
    except UserError:
        return []


def cell_word(basis: RunBasis) -> str:
    """"holds (measured)", "outside (inferred)"."""
    return f"{'holds' if basis.holds else 'outside'} ({basis.kind})"
