"""Figures: the speeds a nightly already measures, as name -> number.

Tests record a figure with `record_figure(request, "hotplug_unplug_s:acpi-pcihp", 0.09)`
(a `figure:` user property, so it also lands in junit.xml where a CI system can
chart it).  A report's `figures` object holds, per QEMU run, the median of every
test's value of each figure (`"7.2.22 tcg@vm hotplug_unplug_s:acpi-pcihp"`), the
run's wall time (`"7.2.22 tcg@vm wall_s"`), and what its crash hunts measured.
Every key names where it was measured (`figure_scope`: QEMU label, accelerator,
host), so a KVM night and a TCG night, or two lab hosts, never share a reference.

The unit decides which way is worse: names ending in `_s` or `_ms` are times
(bigger is slower); names ending in `_per_s` are rates (smaller is slower).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

PREFIX = "figure:"


class _HasUserProperties(Protocol):
    @property
    def node(self) -> Any: ...


def record_figure(request: _HasUserProperties, name: str, value: float) -> None:
    """Record one measured figure of this test for the nightly's history."""
    if not name or " " in name:
        raise ValueError(f"figure name {name!r} must be non-empty and have no spaces")
    request.node.user_properties.append((PREFIX + name, round(float(value), 4)))


def test_figures(properties: Mapping[str, object]) -> dict[str, float]:
    """The figures among one test's user properties (numbers only)."""
    found: dict[str, float] = {}
    for key, value in properties.items():
        if key.startswith(PREFIX) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            found[key[len(PREFIX):]] = float(value)
    return found


test_figures.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def lower_is_better(name: str) -> bool | None:
    """True for times, False for rates, None for a figure without a known unit."""
    base = name.split(":", 1)[0]
    if base.endswith("_per_s"):
        return False
    if base.endswith(("_s", "_ms")):
        return True
    return None


def figure_scope(label: str, accel: str | None, hosts: Iterable[str | None]) -> str:
    """"7.2.22 tcg@vm": the QEMU run, the accelerator (the first word of the
    plugin's accelerator line, "tcg: KVM unusable ...") and the host(s) that ran
    it; one token each, so the figure's name stays the last word of the key."""
    word = (accel or "").split(":", 1)[0].strip().split(" ")[0] or "unknown-accel"
    names = "+".join(sorted({h for h in hosts if h})) or "unknown-host"
    return f"{label.replace(' ', '_')} {word}@{names.replace(' ', '_')}"


def figure_name(key: str) -> str:
    """The figure of a report key ("7.2.22 tcg@vm wall_s" -> "wall_s")."""
    return key.rsplit(" ", 1)[-1]


def run_figures(label: str, per_test: Iterable[Mapping[str, float]],
                wall_s: float | None = None) -> dict[str, float]:
    """One QEMU run's figures: the median of each figure over the tests that recorded it."""
    values: dict[str, list[float]] = {}
    for figures in per_test:
        for name, value in figures.items():
            values.setdefault(name, []).append(value)
    out = {f"{label} {name}": round(statistics.median(v), 4) for name, v in sorted(values.items())}
    if wall_s is not None:
        out[f"{label} wall_s"] = round(wall_s, 3)
    return out


def hunt_figures(label: str, result: Mapping[str, Any] | None) -> dict[str, float]:
    """What a ping-pong run's --json says about its speed (hop time, downtime)."""
    if not result:
        return {}
    out: dict[str, float] = {}
    for key, name, scale in (("hop_s", "pingpong_hop_p50_s", 1.0),
                             ("downtime_ms", "pingpong_downtime_p50_ms", 1.0)):
        value = result.get(key)
        if isinstance(value, Mapping) and isinstance(value.get("p50"), (int, float)):
            out[f"{label} {name}"] = round(float(value["p50"]) * scale, 4)
    return out
