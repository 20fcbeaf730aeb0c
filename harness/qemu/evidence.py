"""Does a known gap's range say what its measurements say?  (tests/unit/test_known_gaps.py)

Every measurement is read, not only the ones at the ends: each must be a
binary's full version on machine types the gap can speak of, no version may be
measured both failing and passing on one machine kind, and each must lie on the
side of the range (and machine scope) its outcome says.  What lies between
measurements is not checked here: it is inferred, and the reports say so
(`KnownGap.basis`, harness/report/gaps.py).
"""

from __future__ import annotations

from harness.errors import UserError
from harness.qemu.facts import Version, is_development, machine_kind_of, parse_version, show_version
from harness.qemu.gap import FAILS, PASSES, KnownGap, Measurement
from harness.qemu.ranges import family_version


def _bound_of(qemu: str) -> Version:
    """The bound a measured version can set: its release series ("10.0.2" -> 10.0),
    or for a development build the build itself (10.1.50 says nothing of 10.1.x)."""
    version = parse_version(qemu)
    return version if is_development(version) else version[:2]


def _claims(gap: KnownGap, measurement: Measurement, machine: str) -> bool | None:
    """Whether the gap, by its range and machines, says `machine` on this version
    shows it (None: the machine name cannot be judged)."""
    firmware = family_version(measurement.firmware) if measurement.firmware else None
    try:
        return gap.holds(parse_version(measurement.qemu), machine, firmware)
    except UserError:
        return None


def measurement_problems(gap: KnownGap) -> list[str]:
    """Each measurement on its own and against the others: a full version of a
    binary, a known outcome, machines the gap can speak of, no version measured
    both failing and passing on one machine, and every measurement on the side
    of the range (and machine scope) its outcome says."""
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}  # (version, machine kind, firmware)
    for m in gap.evidence:
        name = f"{gap.id}: measurement {m.qemu}" + (f" with {m.firmware}" if m.firmware else "")
        if len(parse_version(m.qemu)) != 3:
            problems.append(f"{name} is a series, not a binary's version (write e.g. "
                            f"{m.qemu}.0 as the binary printed it)")
            continue
        if m.outcome not in (FAILS, PASSES):
            problems.append(f"{name}: outcome {m.outcome!r} is neither {FAILS!r} nor {PASSES!r}")
            continue
        if not m.machines:
            problems.append(f"{name} names no machine type")
        for machine in m.machines:
            kind = machine_kind_of(machine)
            if kind is None:
                problems.append(f"{name}: unknown machine type {machine!r}")
                continue
            if gap.machines and kind not in gap.machines:
                problems.append(f"{name} ran {machine}, outside the gap's machines "
                                f"{'/'.join(sorted(gap.machines))}")
                continue
            other = seen.setdefault((m.qemu, kind, m.firmware), m.outcome)
            if other != m.outcome:
                problems.append(f"{name} both {FAILS} and {PASSES} on {kind}: the evidence "
                                "contradicts itself")
            claims = _claims(gap, m, machine)
            if claims is None:
                problems.append(f"{name} ran {machine!r}, an alias, and the gap depends on "
                                "the machine type's version: record the versioned type")
            elif claims != (m.outcome == FAILS):
                side = "outside" if m.outcome == FAILS else "inside"
                problems.append(f"{name} {m.outcome} on {machine}, {side} {gap.scope()}")
    return problems


def evidence_problems(gap: KnownGap) -> list[str]:
    """Where `gap.versions` says more or less than its measurements ([] when it agrees).

    Every measurement is checked (`measurement_problems`): each version measured
    failing is inside, each measured passing outside, on the machines it ran.
    `introduced` is the series of the oldest failing measurement and `fixed` the
    series of a passing one (a development build sets its own version); an open
    `fixed` needs the newest measurement to be a failure.  What lies between
    measurements stays inferred (`KnownGap.basis`), and the reports say so.
    """
    problems = measurement_problems(gap)
    evidence = gap.evidence
    if gap.firmware is not None:
        problems += firmware_problems(gap)
        # The QEMU range rests on the measurements whose firmware is inside its range.
        evidence = tuple(m for m in evidence
                         if gap.firmware.holds(*family_version(m.firmware)))
    measured = sorted((m for m in evidence if len(parse_version(m.qemu)) == 3),
                      key=lambda m: (parse_version(m.qemu), m.qemu))
    failing = [m.qemu for m in measured if m.outcome == FAILS]
    passing = [m.qemu for m in measured if m.outcome == PASSES]
    if not failing:
        return problems + [f"{gap.id}: no measurement shows the gap"]
    introduced = gap.versions.introduced
    if introduced != _bound_of(failing[0]):
        problems.append(f"{gap.id}: introduced {show_version(introduced) if introduced else None} "
                        f"is not the series of the oldest failing measurement {failing[0]}")
    fixed = gap.versions.fixed
    if fixed is None and measured[-1].outcome != FAILS:
        problems.append(f"{gap.id}: open-ended, but the newest measurement {measured[-1].qemu} "
                        "passes")
    if fixed is not None and fixed not in {_bound_of(v) for v in passing}:
        problems.append(f"{gap.id}: fixed {show_version(fixed)} is not the series of a "
                        "version measured passing")
    return problems


def firmware_problems(gap: KnownGap) -> list[str]:
    """A gap keyed by firmware too: every measurement names the firmware it ran (which
    side of both ranges it lies on is measurement_problems' check)."""
    return [f"{gap.id}: the measurement on {m.qemu} names no firmware"
            for m in gap.evidence if not m.firmware]
