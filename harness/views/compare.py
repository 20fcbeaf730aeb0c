"""Three-way diff of model, QEMU and guest views; before/after diff of one view.

Functions are matched by their bridge-tree path.  For each field only the views
that know it (value not None) take part; a Difference is reported when those
values are not all equal.  BARs are compared per index and attribute, and named
"bars[4].size" so a failure says exactly what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.views.pciview import BAR_ATTRS, SCALAR_FIELDS, PciFunction, PciView

ABSENT = "absent"  # a view that lists functions (or BARs) but not this one


@dataclass(frozen=True)
class Difference:
    device: str  # the topology id when any view knows it, else the path "02.0/00.0"
    field: str
    model: Any
    qemu: Any
    guest: Any

    def __str__(self) -> str:
        return (f"{self.device}: {self.field}: model={_fmt(self.model)} "
                f"qemu={_fmt(self.qemu)} guest={_fmt(self.guest)}")


@dataclass(frozen=True)
class Change:
    device: str
    field: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.device}: {self.field}: {_fmt(self.before)} -> {_fmt(self.after)}"


def format_value(value: Any) -> str:
    """How a compared value is shown to people: ids and addresses in hex."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 9:
        return hex(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return repr(value)


_fmt = format_value


def _name(funcs: list[PciFunction | None], path: tuple[str, ...]) -> str:
    for f in funcs:
        if f is not None and f.id:
            return f.id
    return "/".join(path)


def _field_values(f: PciFunction | None) -> dict[str, Any]:
    """Every comparable value of one function, BARs flattened; {} for a missing view."""
    if f is None:
        return {}
    out = {name: getattr(f, name) for name in SCALAR_FIELDS}
    if f.bars is not None:
        out["bars"] = {b.index: b for b in f.bars}
    return out


def _bar_values(views: list[dict[str, Any]]) -> dict[str, list[Any]]:
    indexes = sorted({i for v in views for i in (v.get("bars") or {})})
    out: dict[str, list[Any]] = {}
    for i in indexes:
        for attr in BAR_ATTRS:
            vals: list[Any] = []
            for v in views:
                bars = v.get("bars")
                if bars is None:
                    vals.append(None)
                elif i not in bars:
                    vals.append(ABSENT if attr == "kind" else None)
                else:
                    vals.append(getattr(bars[i], attr))
            out[f"bars[{i}].{attr}"] = vals
    return out


def _differs(values: list[Any], strict: bool = False) -> bool:
    """Unequal values; unless strict, a None (the view cannot know) takes no part."""
    known = values if strict else [v for v in values if v is not None]
    return any(v != known[0] for v in known[1:])


def _diff_functions(funcs: list[PciFunction | None],
                    strict: bool = False) -> list[tuple[str, list[Any]]]:
    views = [_field_values(f) for f in funcs]
    rows: list[tuple[str, list[Any]]] = []
    for name in SCALAR_FIELDS:
        rows.append((name, [v.get(name) for v in views]))
    rows += _bar_values(views).items()
    return [(field, vals) for field, vals in rows if _differs(vals, strict)]


def compare(model: PciView, qemu: PciView, guest: PciView | None = None) -> list[Difference]:
    """Differences between the views, function by function (a None guest is skipped)."""
    views = [model, qemu, guest]
    maps = [v.by_path() if v is not None else None for v in views]
    paths = sorted({p for m in maps if m is not None for p in m})
    out: list[Difference] = []
    for path in paths:
        funcs = [m.get(path) if m is not None else None for m in maps]
        name = _name(funcs, path)
        present = [None if m is None else (path in m) for m in maps]
        if _differs(present):
            out.append(Difference(name, "present", *present))
            continue
        for field, vals in _diff_functions(funcs):
            out.append(Difference(name, field, *vals))
    root = [v.root_bus_hotplug if v is not None else None for v in views]
    if _differs(root):
        out.append(Difference("root bus", "bus_hotplug", *root))
    return out


def diff_views(before: PciView, after: PciView) -> list[Change]:
    """What changed between two views of the same kind (hotplug, migration)."""
    a_map, b_map = before.by_path(), after.by_path()
    out: list[Change] = []
    for path in sorted(set(a_map) | set(b_map)):
        a, b = a_map.get(path), b_map.get(path)
        name = _name([a, b], path)
        if a is None or b is None:
            out.append(Change(name, "present", a is not None, b is not None))
            continue
        for field, (va, vb) in _diff_functions([a, b], strict=True):
            out.append(Change(name, field, va, vb))
    if before.root_bus_hotplug != after.root_bus_hotplug:
        out.append(Change("root bus", "bus_hotplug", before.root_bus_hotplug,
                          after.root_bus_hotplug))
    return out
